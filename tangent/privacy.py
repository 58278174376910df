"""Differentially private SGD on tangent vectors.

One DP-SGD gradient for a batch of B examples (Abadi et al. 2016)::

    g_i = grad_d loss(d; x_i, y_i)                      per example, by vmap
    g_i <- g_i * min(1, C / ||g_i||)                     clip the whole vector to norm C
    g   = (sum_i g_i + N(0, (sigma C)^2 I)) / B

The privacy spent is reported by Google's ``dp-accounting`` package for the sampling that
ran. ``tangent.fit`` draws each step's B examples uniformly without replacement from the N,
independently across steps, so its epsilon is that of ``steps`` self-composed
``SampledWithoutReplacementDpEvent(N, B, Gaussian)`` events (RDP accountant, Wang, Balle and
Kasiviswanathan 2019). That event is defined for the *replace-one* neighbouring relation, under
which the clipped sum changes by up to ``2C``: the Gaussian event's noise multiplier (noise std /
sensitivity) is therefore ``sigma C / 2C = sigma / 2``. ``sampling="poisson"`` gives the epsilon
of Poisson sampling with rate B / N (add-or-remove-one, sensitivity C), for runs that sample
that way.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp


class Sampling(str, enum.Enum):
    """How each step's batch is drawn: fixed size without replacement, or Poisson."""

    WITHOUT_REPLACEMENT = "without_replacement"
    POISSON = "poisson"


def check_positive_finite(name: str, value) -> None:
    """ValueError unless ``value`` is a positive finite number. Traced values (inside ``jit``)
    cannot be inspected and pass unchecked."""
    try:
        number = float(value)
    except jax.errors.ConcretizationTypeError:
        return
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a positive finite number") from None
    if isinstance(value, (bool, str, bytes)) or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name}={value!r}: expected a positive finite number")


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
    """``min(1, C / ||g_i||)`` (B,): the factor that clips each example's gradient to norm C
    (ValueError unless C is a positive finite number)."""
    check_positive_finite("l2_clip", l2_clip)
    return l2_clip / jnp.maximum(per_example_norms(grads), l2_clip)


def clip(grads, l2_clip: float):
    """Scale each example's gradient by ``min(1, C / norm)`` so that its norm is at most C."""
    scale = clip_scales(grads, l2_clip)
    return jax.tree.map(lambda g: g * scale.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), grads)


def _check_noise(noise_multiplier) -> None:
    try:
        number = float(noise_multiplier)
    except jax.errors.ConcretizationTypeError:
        return
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(noise_multiplier, (bool, str, bytes)) or not (math.isfinite(number) and number >= 0):
        raise ValueError(f"noise_multiplier={noise_multiplier!r}: expected a finite number >= 0")


def privatize(grads, l2_clip: float, noise_multiplier: float, key: jax.Array):
    """``(sum_i clip(g_i) + N(0, (sigma C)^2)) / B`` from per-example ``grads``.

    The clipped sum is one contraction ``sum_i s_i g_i`` with the clip factors ``s``, so the
    clipped per-example copies are never materialized.
    """
    _check_noise(noise_multiplier)
    scale = clip_scales(grads, l2_clip)
    leaves, treedef = jax.tree.flatten(grads)
    keys = jax.random.split(key, len(leaves))
    batch = leaves[0].shape[0]
    noisy = [(jnp.tensordot(scale.astype(g.dtype), g, axes=1)
              + noise_multiplier * l2_clip * jax.random.normal(k, g.shape[1:], g.dtype)) / batch
             for g, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


def epsilon(noise_multiplier: float, *, batch_size: int, dataset_size: int, steps: int, delta: float,
            sampling: Sampling | str = Sampling.WITHOUT_REPLACEMENT, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of ``steps`` DP-SGD steps of ``batch_size`` of ``dataset_size`` examples
    with noise std ``noise_multiplier * C`` (dp-accounting; see the module docstring).

    ``sampling``: ``"without_replacement"`` (what ``tangent.fit`` runs; RDP accountant only) or
    ``"poisson"`` (rate ``batch_size / dataset_size``; ``accountant`` "rdp" or "pld").
    """
    try:
        import dp_accounting
    except ImportError as e:
        raise ImportError("tangent.epsilon needs dp-accounting: pip install dp-accounting "
                          "(or the project's 'experiments' extra)") from e

    sampling = Sampling(sampling)
    for name, value in (("batch_size", batch_size), ("dataset_size", dataset_size), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive integer")
    if batch_size > dataset_size:
        raise ValueError(f"batch_size={batch_size} exceeds dataset_size={dataset_size}")
    if not noise_multiplier > 0 or not math.isfinite(noise_multiplier):
        raise ValueError(f"noise_multiplier={noise_multiplier!r}: epsilon needs positive finite noise "
                         "(without noise the guarantee is epsilon = inf)")
    if not 0 < delta < 1:
        raise ValueError(f"delta={delta!r}: expected a number in (0, 1)")
    relation = dp_accounting.NeighboringRelation
    if sampling is Sampling.WITHOUT_REPLACEMENT:
        if accountant != "rdp":
            raise ValueError(f"accountant={accountant!r}: sampling without replacement is accounted by 'rdp'")
        event = dp_accounting.SampledWithoutReplacementDpEvent(
            dataset_size, batch_size, dp_accounting.GaussianDpEvent(noise_multiplier / 2))
        acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation.REPLACE_ONE)
    else:
        accountants = {"rdp": dp_accounting.rdp.RdpAccountant, "pld": dp_accounting.pld.PLDAccountant}
        if accountant not in accountants:
            raise ValueError(f"accountant={accountant!r}: expected one of {sorted(accountants)}")
        event = dp_accounting.PoissonSampledDpEvent(batch_size / dataset_size,
                                                    dp_accounting.GaussianDpEvent(noise_multiplier))
        acc = accountants[accountant]()
    acc.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return float(acc.get_epsilon(delta))


@dataclasses.dataclass(frozen=True)
class DPSGD:
    """DP-SGD settings for ``tangent.fit``: clip norm C and noise multiplier sigma."""

    l2_clip: float
    noise_multiplier: float

    def __post_init__(self):
        check_positive_finite("l2_clip", self.l2_clip)
        _check_noise(self.noise_multiplier)

    def value_and_grad(self, loss_of: Callable, d, features, targets, key):
        """Mean loss over the batch and the private gradient."""
        losses, grads = per_example_grads(loss_of, d, features, targets)
        return losses.mean(), privatize(grads, self.l2_clip, self.noise_multiplier, key)

    def epsilon(self, *, steps: int, batch_size: int, dataset_size: int, delta: float,
                sampling: Sampling | str = Sampling.WITHOUT_REPLACEMENT, accountant: str = "rdp") -> float:
        """``tangent.privacy.epsilon`` of these settings."""
        return epsilon(self.noise_multiplier, batch_size=batch_size, dataset_size=dataset_size, steps=steps,
                       delta=delta, sampling=sampling, accountant=accountant)
