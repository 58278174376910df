"""Losses ``loss(outputs, targets) -> scalar`` (means over the batch), in float32.

``outputs``: (batch, K) logits or regression outputs; class ``targets``: int (batch,).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax


def _check_classes(outputs, labels) -> None:
    if outputs.ndim != 2 or labels.shape != outputs.shape[:1]:
        raise ValueError(f"outputs has shape {tuple(outputs.shape)} and labels {tuple(labels.shape)}; "
                         "expected (batch, classes) and (batch,)")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``mean_i [logsumexp(logits_i) - logits_i[y_i]]``; logits (batch, K), labels int (batch,)."""
    _check_classes(logits, labels)
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def mse(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """``mean_i sum_k (outputs_ik - targets_ik)^2 / 2`` over any matching shapes (batch first)."""
    if outputs.shape != targets.shape:
        raise ValueError(f"targets has shape {tuple(targets.shape)}; expected {tuple(outputs.shape)} "
                         "(the outputs' shape)")
    diff = (outputs.astype(jnp.float32) - targets.astype(jnp.float32)).reshape(outputs.shape[0], -1)
    return 0.5 * jnp.mean(jnp.sum(diff**2, axis=-1))


def rescaled_square_loss(logits: jax.Array, labels: jax.Array, *, kappa: float = 1.0,
                         beta: float = 1.0) -> jax.Array:
    """Rescaled square loss (LQF): ``mean_i (1/K)[kappa (f_y - beta)^2 + sum_{k != y} f_k^2]``.

    logits (batch, K), labels int (batch,). ``kappa = beta = 1`` is the plain square loss
    against one-hot targets divided by K.
    """
    _check_classes(logits, labels)
    f = logits.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, f.shape[-1], dtype=jnp.float32)
    f_y = jnp.sum(f * onehot, axis=-1)
    others = jnp.sum(f**2 * (1.0 - onehot), axis=-1)
    return jnp.mean(kappa * (f_y - beta) ** 2 + others) / f.shape[-1]


@dataclasses.dataclass(frozen=True)
class RescaledSquareLoss:
    """``rescaled_square_loss`` with fixed ``kappa`` and ``beta`` as a hashable callable, so that
    ``tangent.fit`` compiles it once per setting. The authors' TMC code uses ``kappa = 1`` with
    ``beta = 15`` (class-incremental) or ``beta = 5`` (data-incremental)."""

    kappa: float = 1.0
    beta: float = 1.0

    def __post_init__(self):
        for name in ("kappa", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r}: expected a positive finite number")

    def __call__(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
        return rescaled_square_loss(logits, labels, kappa=self.kappa, beta=self.beta)


LOSSES = {"cross_entropy": cross_entropy, "mse": mse, "rsl": RescaledSquareLoss()}


def get(loss) -> callable:
    """A loss function from a callable or one of the names in ``LOSSES``."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be a callable or one of {sorted(LOSSES)}; got {loss!r}")
    return LOSSES[loss]
