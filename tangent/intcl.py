"""Integral Continual Learning along the tangent vector field of tasks (IntCL; Liu, Golatkar,
Soatto and Achille, arXiv 2211.13108).

Tasks ``D_1 .. D_T`` arrive in sequence; ``w_0`` are the pretrained weights, ``B_t`` a replay
buffer of at most ``M`` examples. For ``t = 1 .. T``::

    d_t = argmin_d  E_{(x, y) ~ D_t (+) B_{t-1}}  loss(f(x; w_{t-1}) + J_{w_{t-1}}(x) d, y)  [+ penalty ||d||_2]
    w_t = w_{t-1} + d_t                                   (integrate the step)
    B_t = reservoir(B_{t-1}, D_t)                         (fixed size M)

so each step is a convex problem on the tangent plane at the *integrated* point ``w_{t-1}``
(``TangentModel.around``), not at ``w_0``; ``w_T = w_0 + sum_t d_t``. The model after task ``t``
is the tangent model that was trained, ``f(x; w_{t-1}) + J_{w_{t-1}}(x) d_t``. Passing a model
whose ``apply_features`` is the network itself at ``w0 + d`` (non-linear) turns the same loop
into sequential fine-tuning with the same replay buffer: the baseline IntCL is compared with.

Our choices, where the paper's details are not available to us (options where it matters):

* ``D_t (+) B_{t-1}``: each minibatch is drawn without replacement from the task's examples and
  the buffer together, the buffer holding ``replay_fraction`` of the sampling probability
  (default 0.5: about half of each batch is replayed, as in experience replay).
* ``reservoir``: Vitter's algorithm R over the stream of examples in task order, applied after
  training on the task, so ``B_t`` is a uniform sample of ``D_1 .. D_t`` of size ``min(M, n)``.
* The optimizer state starts afresh at every task, and every task takes ``steps`` steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from tangent.linearize import TangentModel
from tangent.train import fit
from tangent.vectors import TangentVector


def reservoir(buffer: Sequence, seen: int, capacity: int, items: Sequence,
              rng: np.random.Generator) -> tuple[list, int]:
    """Algorithm R: ``(buffer, seen)`` after streaming ``items``; ``seen`` counts the items
    streamed before. Each streamed item ends up in the buffer with probability ``capacity / seen``."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise ValueError(f"capacity={capacity!r}: expected a non-negative integer")
    buffer = list(buffer)
    for item in items:
        if len(buffer) < capacity:
            buffer.append(item)
        else:
            slot = int(rng.integers(0, seen + 1))
            if slot < capacity:
                buffer[slot] = item
        seen += 1
    return buffer, seen


@dataclasses.dataclass
class IntCLResult:
    """``models[t]``: the tangent model at ``w_t`` (``w_0`` for t = 0); ``steps[t]``: ``d_{t+1}``,
    the step trained on ``models[t]``; the predictor after task ``t + 1`` is
    ``models[t](steps[t], x)``. ``buffers[t]``: the ``(task, example)`` pairs in the buffer
    after task ``t + 1``; ``losses[t]``: the training losses of task ``t + 1``."""

    models: list[TangentModel]
    steps: list[TangentVector]
    buffers: list[list[tuple[int, int]]]
    losses: list[np.ndarray]

    @property
    def integrated(self) -> TangentVector:
        """``w_T - w_0 = sum_t d_t``."""
        total = self.steps[0]
        for d in self.steps[1:]:
            total = total + d
        return total


def _gather(tasks, pairs):
    """Inputs (a tuple of arrays) and targets of the ``(task, example)`` pairs."""
    by_task = [[i for t, i in pairs if t == task] for task in range(len(tasks))]
    parts = [(tuple(np.asarray(a)[idx] for a in tasks[t][0]), np.asarray(tasks[t][1])[idx])
             for t, idx in enumerate(by_task) if idx]
    inputs = tuple(np.concatenate([p[0][j] for p in parts]) for j in range(len(parts[0][0])))
    return inputs, np.concatenate([p[1] for p in parts])


def fit_intcl(model: TangentModel, tasks: Sequence[tuple], *, steps: int, buffer_size: int,
          replay_fraction: float = 0.5, batch_size: int | None = None, key: jax.Array | None = None,
          seed: int = 0, **fit_kwargs) -> IntCLResult:
    """IntCL over ``tasks``: a sequence of ``(inputs, targets)``, ``inputs`` an array or a
    tuple of arrays (examples, ...). ``buffer_size``: M (0: no replay). ``key``: minibatches
    (task ``t`` uses ``fold_in(key, t)``); ``seed``: the reservoir's random choices.
    ``fit_kwargs``: ``optimizer``, ``loss``, ``penalty``... of ``tangent.fit``.
    """
    if not tasks:
        raise ValueError("tasks must hold at least one (inputs, targets) task")
    if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 0:
        raise ValueError(f"buffer_size={buffer_size!r}: expected a non-negative integer")
    if not 0 <= replay_fraction < 1:
        raise ValueError(f"replay_fraction={replay_fraction!r}: expected a number in [0, 1)")
    tasks = [((x,) if not isinstance(x, tuple) else x, y) for x, y in tasks]
    key = jax.random.key(0) if key is None else key
    rng = np.random.default_rng(seed)
    buffer, seen = [], 0
    result = IntCLResult([model], [], [], [])
    for t, (inputs, targets) in enumerate(tasks):
        n = len(targets)
        weights = None
        if buffer and replay_fraction > 0:
            replay_x, replay_y = _gather(tasks, buffer)
            inputs = tuple(np.concatenate([np.asarray(a), b]) for a, b in zip(inputs, replay_x))
            targets = np.concatenate([np.asarray(targets), replay_y])
            weights = np.concatenate([np.full(n, (1 - replay_fraction) / n),
                                      np.full(len(buffer), replay_fraction / len(buffer))])
        batch = None if batch_size is None else min(batch_size, len(targets))
        out = fit(result.models[-1], inputs, targets, steps=steps, batch_size=batch,
                  key=jax.random.fold_in(key, t), sample_weights=weights, **fit_kwargs)
        result.steps.append(out.tangent)
        result.losses.append(out.losses)
        buffer, seen = reservoir(buffer, seen, buffer_size, [(t, i) for i in range(n)], rng)
        result.buffers.append(list(buffer))
        if t + 1 < len(tasks):
            result.models.append(result.models[-1].around(out.tangent))
    return result
