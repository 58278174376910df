"""Jit-compiled training and evaluation with optax, sharded over a mesh, with checkpoints and a progress bar.

The pieces an experiment supplies:
    loss_fn(params, batch, rng) -> (loss, metrics)       scalar loss, dict of scalar metrics
    batches(step) -> batch                               a pytree of host arrays, a pure function of
                                                         the step (so resuming resumes the data too)
    metric_fn(params, batch) -> dict of sums             for `evaluate` (e.g. correct, count)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from experiments.harness import sharding as sharding_lib
from experiments.harness.checkpoint import Checkpointer
from experiments.harness.results import Results

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]


class TrainState(flax.struct.PyTreeNode):
    """Everything a resumed run needs: step, params, optimizer state and the base RNG key."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation, seed: int) -> "TrainState":
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            rng=jax.random.key_data(jax.random.key(seed)),
        )


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation):
    """(state, batch) -> (state, metrics): one optimizer step. The step's RNG is fold_in(rng, step)."""

    def train_step(state: TrainState, batch: Any):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def fit(
    state: TrainState,
    train_step: Callable,
    batches: Callable[[int], Any],
    *,
    steps: int,
    mesh: jax.sharding.Mesh | None = None,
    param_rule: sharding_lib.Rule | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    results: Results | None = None,
    run: str = "train",
    log_every: int = 50,
    progress: bool = True,
    stop: Callable[[int, TrainState], bool] | None = None,
    stop_every: int = 0,
) -> TrainState:
    """Train `state` up to `steps` total steps, resuming from the latest checkpoint in `checkpoint_dir`.

    Batches are split over the "data" axis of `mesh` (default: all local devices); the state is placed
    by `param_rule` (default: replicated). Every `log_every` steps the metrics averaged since the last
    log are written to `results` (with "run", "step", "examples_per_s") and shown on the progress bar.
    A checkpoint is saved every `checkpoint_every` steps and at the end.

    Resuming: from the last completely written checkpoint (an interrupted save is discarded), printing
    which step; the records of `run` in `results` after that step (all of them when starting from
    step 0) are dropped first, so a rerun never duplicates a record.

    Step N is the N-th optimizer step, numbered as in the metrics records. A non-finite loss raises
    FloatingPointError("run 'NAME': loss is nan at step N") at the first log boundary (every
    `log_every` steps) or checkpoint save after step N, whichever comes first, using the metrics
    fetched there anyway (no extra device sync): no record and no checkpoint holds a later step.

    Early stopping: every `stop_every` steps (and not after the last step) `stop(step, state)` is
    called; when it returns True the state is checkpointed and returned (`state.step` < `steps`).
    """
    if steps < 0 or log_every < 1 or stop_every < 0:
        raise ValueError(f"fit needs steps >= 0, log_every >= 1 and stop_every >= 0; got steps={steps}, "
                         f"log_every={log_every}, stop_every={stop_every}")
    mesh = mesh or sharding_lib.make_mesh()
    state_sharding = sharding_lib.tree_shardings(state, mesh, param_rule)
    # Our copy of the state is donated to the step; copy first so the caller's arrays stay valid
    # (device_put(may_alias=False) still aliases the source device's shard when replicating).
    state = jax.device_put(jax.tree.map(jnp.copy, state), state_sharding)
    ckpt = Checkpointer(checkpoint_dir, checkpoint_every) if checkpoint_dir else None
    try:
        start = 0
        if ckpt is not None:
            if ckpt.discarded:
                print(f"{run}: discarded incomplete checkpoints {', '.join(ckpt.discarded)} "
                      f"in {ckpt.directory}")
            if ckpt.latest_step() is not None:
                state, meta = ckpt.restore(state)
                start = int(meta["data_position"])
                print(f"{run}: resumed from step {start} (checkpoint in {ckpt.directory})")
        if results is not None:
            results.drop_metrics(run, start)
        step_fn = jax.jit(
            train_step,
            in_shardings=(state_sharding, sharding_lib.batch_sharding(mesh)),
            out_shardings=(state_sharding, sharding_lib.replicated(mesh)),
            donate_argnums=0,
        )
        bar = tqdm.tqdm(total=steps, initial=start, desc=run, disable=not progress, dynamic_ncols=True)
        pending, examples, tic = [], 0, time.perf_counter()
        for step in range(start, steps):
            batch = batches(step)
            examples += len(jax.tree.leaves(batch)[0])
            state, metrics = step_fn(state, sharding_lib.shard_batch(batch, mesh))
            pending.append(metrics)
            done = step + 1
            log_now = done % log_every == 0 or done == steps
            if log_now or (ckpt is not None and ckpt.due(done)):
                pending = jax.device_get(pending)
                _check_finite(pending, done - len(pending), run)
            if log_now:
                means = {k: float(np.mean([m[k] for m in pending])) for k in pending[0]}
                rate = examples / (time.perf_counter() - tic)
                bar.set_postfix(loss=f"{means['loss']:.4f}", ex_per_s=f"{rate:.0f}")
                if results is not None:
                    results.log({"run": run, "step": done, **means, "examples_per_s": rate})
                pending, examples, tic = [], 0, time.perf_counter()
            bar.update(1)
            stopping = (stop is not None and stop_every and done % stop_every == 0 and done < steps
                        and stop(done, state))
            if ckpt is not None:
                ckpt.maybe_save(done, state, {"step": done, "data_position": done},
                                force=done == steps or stopping)
            if stopping:
                break
        bar.close()
    finally:
        if ckpt is not None:
            ckpt.close()
    return state


def _check_finite(metrics: list[dict], first: int, run: str) -> None:
    """FloatingPointError naming `run` and the step if a loss in `metrics` (host values of steps
    first + 1, first + 2, ...) is NaN or infinite."""
    for i, m in enumerate(metrics):
        loss = float(m["loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(f"run {run!r}: loss is {loss} at step {first + i + 1}")


def evaluate(
    metric_fn: Callable[[Any, Any], dict],
    params: Any,
    batches: Iterable[Any],
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, float]:
    """Sum `metric_fn(params, batch)` (a dict of sums, e.g. correct and count) over `batches`."""
    mesh = mesh or sharding_lib.make_mesh()
    fn = jax.jit(metric_fn, out_shardings=sharding_lib.replicated(mesh))
    totals: dict[str, float] = {}
    for batch in batches:
        for k, v in jax.device_get(fn(params, sharding_lib.shard_batch(batch, mesh))).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return totals
