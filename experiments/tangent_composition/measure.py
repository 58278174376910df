"""Evaluation and cost: logits on cached features, accuracy (over all or some classes), mean and
standard deviation over seeds, compiled FLOPs, timings, shards and class tasks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_apply = jax.jit(lambda model, d, h: model.apply_features(d, h))
_apply_stacked = jax.jit(lambda model, ds, h: jax.vmap(lambda d: model.apply_features(d, h))(ds))


def logits(model, d, features: tuple, *, stacked: bool = False, chunk: int = 256) -> np.ndarray:
    """``model.apply_features(d, h)``: (n, classes), or (K, n, classes) for a stacked (K, ...) ``d``;
    ``chunk`` examples per call (``chunk / K`` when stacked), the last chunk padded with its first
    example so that every call has the same shapes (one compilation per model, whatever n)."""
    n = len(features[0])
    if stacked:
        chunk = max(1, chunk // len(jax.tree.leaves(d)[0]))
    fn = _apply_stacked if stacked else _apply
    parts = []
    for i in range(0, n, chunk):
        part = tuple(a[i:i + chunk] for a in features)
        pad = chunk - len(part[0])
        if pad:
            part = tuple(np.concatenate([a, np.repeat(a[:1], pad, axis=0)]) for a in part)
        parts.append(np.asarray(fn(model, d, part))[..., :chunk - pad, :])
    return np.concatenate(parts, axis=-2)


def accuracy(logits: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """Fraction of examples whose argmax over ``classes`` (default all) is their label."""
    if classes is None:
        return float(np.mean(np.argmax(logits, -1) == labels))
    classes = np.asarray(classes)
    return float(np.mean(classes[np.argmax(logits[..., classes], -1)] == labels))


def task_accuracy(logits: np.ndarray, labels: np.ndarray, tasks: Sequence[Sequence[int]]) -> float:
    """Task-incremental accuracy: each example's argmax over the classes of its own task."""
    correct = 0
    for classes in tasks:
        mask = np.isin(labels, classes)
        correct += accuracy(logits[mask], labels[mask], classes) * mask.sum()
    return float(correct / len(labels))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pm(values: Sequence[float], digits: int = 3) -> str:
    """``mean ± std`` of ``values`` for tables."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


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


def shard_indices(n: int, num_shards: int, seed: int) -> np.ndarray:
    """(num_shards, n // num_shards) example indices: a random permutation cut into equal shards."""
    if num_shards > n:
        raise ValueError(f"Config.shards: {num_shards} shards of {n} training examples")
    per = n // num_shards
    return np.random.default_rng(seed).permutation(n)[:num_shards * per].reshape(num_shards, per)


def class_tasks(labels: np.ndarray, num_classes: int, num_tasks: int, seed: int) -> tuple[np.ndarray, list]:
    """``(index (T, m), classes)``: consecutive classes cut into ``num_tasks`` tasks
    (``np.array_split``), each task's examples shuffled and truncated to the smallest task's size m."""
    if num_tasks > num_classes:
        raise ValueError(f"Config.class_tasks: {num_tasks} tasks of {num_classes} classes")
    classes = [c.tolist() for c in np.array_split(np.arange(num_classes), num_tasks)]
    rng = np.random.default_rng(seed)
    members = [rng.permutation(np.flatnonzero(np.isin(labels, c))) for c in classes]
    size = min(len(m) for m in members)
    if size == 0:
        raise ValueError(f"Config.class_tasks: a task of classes {classes} has no training example")
    return np.stack([m[:size] for m in members]), classes
