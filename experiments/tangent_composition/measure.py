"""Evaluation and cost: logits on cached features, accuracy, compiled FLOPs, timings, shards."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

_apply = jax.jit(lambda model, d, h: model.apply_features(d, h))
_apply_stacked = jax.jit(lambda model, ds, h: jax.vmap(lambda d: model.apply_features(d, h))(ds))


def logits(model, d, features: tuple, *, stacked: bool = False, chunk: int = 2048) -> np.ndarray:
    """``model.apply_features(d, h)``: (n, classes), or (K, n, classes) for a stacked (K, ...) ``d``;
    ``chunk`` examples (``chunk / K`` when stacked) per call."""
    n = len(features[0])
    if stacked:
        chunk = max(1, chunk // len(jax.tree.leaves(d)[0]))
    fn = _apply_stacked if stacked else _apply
    parts = [np.asarray(fn(model, d, tuple(a[i:i + chunk] for a in features))) for i in range(0, n, chunk)]
    return np.concatenate(parts, axis=-2)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``argmax(logits, -1) == labels``."""
    return float(np.mean(np.argmax(logits, -1) == labels))


def ensemble_logits(model, ds, *inputs):
    """Mean over the stacked (K, ...) ``ds`` of ``model(d, x)``, the frozen features computed once."""
    h = model.features(*inputs)
    return jnp.mean(jax.vmap(lambda d: model.apply_features(d, h))(ds), axis=0)


def gflops(stage) -> float:
    """XLA's FLOP count (1e9) of a lowered or compiled ``jax.jit`` function (nan if unknown)."""
    cost = stage.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan"))) / 1e9


def seconds(fn: Callable, *args):
    """``(fn(*args), wall seconds)``, waiting for every output array."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def inference_cost(fn: Callable, *args, repeats: int) -> dict[str, float]:
    """Compiled GFLOPs of ``jit(fn)(*args)`` and its median time (ms) over ``repeats`` warm calls."""
    compiled = jax.jit(fn).lower(*args).compile()
    seconds(compiled, *args)
    times = [seconds(compiled, *args)[1] for _ in range(repeats)]
    return {"gflops": gflops(compiled), "ms": 1000 * statistics.median(times)}


def shard_indices(labels: np.ndarray, num_shards: int, split: str, seed: int) -> np.ndarray:
    """(num_shards, n // num_shards) example indices: 'data' cuts a random permutation into
    equal shards; 'class' sorts by label (random ties) first, so each shard sees few classes."""
    n = len(labels)
    if num_shards > n:
        raise ValueError(f"--shards: {num_shards} shards of {n} training examples")
    order = np.random.default_rng(seed).permutation(n)
    if split == "class":
        order = order[np.argsort(labels[order], kind="stable")]
    per = n // num_shards
    return order[:num_shards * per].reshape(num_shards, per)
