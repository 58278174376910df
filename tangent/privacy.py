"""Differentially private SGD on tangent vectors.

One DP-SGD gradient for a batch of B examples (Abadi et al. 2016)::

    g_i = grad_d loss(d; x_i, y_i)                      per example, by vmap
    g_i <- g_i * min(1, C / ||g_i||)                     clip the whole vector to norm C
    g   = (sum_i g_i + N(0, (sigma C)^2 I)) / B

The privacy spent is reported by Google's ``dp-accounting`` package (RDP or PLD accountant)
for a Poisson-subsampled Gaussian mechanism with sampling rate B / N repeated for the
number of steps. (``tangent.fit`` draws fixed-size batches without replacement, the usual
practical stand-in for Poisson sampling.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp


def per_example_grads(loss_of: Callable, d, features, targets):
    """``(losses (B,), grads)``: ``loss_of(d, features, targets)`` on each example alone;
    every gradient leaf gains a leading batch axis."""

    def one(f, t):
        batch_of_one = lambda a: a[None]
        return jax.value_and_grad(loss_of)(d, jax.tree.map(batch_of_one, f), jax.tree.map(batch_of_one, t))

    return jax.vmap(one)(features, targets)


def per_example_norms(grads) -> jax.Array:
    """Euclidean norm (B,) of each example's gradient over all leaves."""
    squares = [jnp.sum(g.astype(jnp.float32).reshape(g.shape[0], -1) ** 2, axis=1)
               for g in jax.tree.leaves(grads)]
    return jnp.sqrt(sum(squares))


def clip_scales(grads, l2_clip: float) -> jax.Array:
    """``min(1, C / ||g_i||)`` (B,): the factor that clips each example's gradient to norm C."""
    return l2_clip / jnp.maximum(per_example_norms(grads), l2_clip)


def clip(grads, l2_clip: float):
    """Scale each example's gradient by ``min(1, C / norm)`` so that its norm is at most C."""
    scale = clip_scales(grads, l2_clip)
    return jax.tree.map(lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), grads)


def privatize(grads, l2_clip: float, noise_multiplier: float, key: jax.Array):
    """``(sum_i clip(g_i) + N(0, (sigma C)^2)) / B`` from per-example ``grads``.

    The clipped sum is one contraction ``sum_i s_i g_i`` with the clip factors ``s``, so the
    clipped per-example copies are never materialized.
    """
    scale = clip_scales(grads, l2_clip)
    leaves, treedef = jax.tree.flatten(grads)
    keys = jax.random.split(key, len(leaves))
    batch = leaves[0].shape[0]
    noisy = [(jnp.tensordot(scale.astype(g.dtype), g, axes=1)
              + noise_multiplier * l2_clip * jax.random.normal(k, g.shape[1:], g.dtype)) / batch
             for g, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            accountant: str = "rdp") -> float:
    """Epsilon of ``steps`` Poisson-subsampled Gaussian steps at ``delta`` (dp-accounting)."""
    import dp_accounting

    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must lie in (0, 1]; got {sample_rate}")
    if noise_multiplier <= 0:
        raise ValueError(f"noise_multiplier must be positive; got {noise_multiplier}")
    accountants = {"rdp": dp_accounting.rdp.RdpAccountant, "pld": dp_accounting.pld.PLDAccountant}
    if accountant not in accountants:
        raise ValueError(f"accountant must be one of {sorted(accountants)}; got {accountant!r}")
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)),
        int(steps))
    acc = accountants[accountant]()
    acc.compose(event)
    return float(acc.get_epsilon(delta))


@dataclasses.dataclass(frozen=True)
class DPSGD:
    """DP-SGD settings for ``tangent.fit``: clip norm C and noise multiplier sigma."""

    l2_clip: float
    noise_multiplier: float

    def __post_init__(self):
        if self.l2_clip <= 0:
            raise ValueError(f"l2_clip must be positive; got {self.l2_clip}")
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0; got {self.noise_multiplier}")

    def value_and_grad(self, loss_of: Callable, d, features, targets, key):
        """Mean loss over the batch and the private gradient."""
        losses, grads = per_example_grads(loss_of, d, features, targets)
        return losses.mean(), privatize(grads, self.l2_clip, self.noise_multiplier, key)

    def epsilon(self, *, steps: int, batch_size: int, dataset_size: int, delta: float,
                accountant: str = "rdp") -> float:
        return epsilon(self.noise_multiplier, batch_size / dataset_size, steps, delta, accountant)
