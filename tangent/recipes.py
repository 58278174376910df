"""Training recipes for tangent vectors: loss, optimizer, learning-rate schedule and norm penalty.

A ``Recipe`` turns into ``tangent.fit`` arguments for a run of ``steps`` steps::

    tangent.fit(model, x, y, steps=steps, **tangent.recipe("tmc_class").fit_kwargs(steps))

The ``tmc_*`` presets are the settings of the TMC authors' released code: the rescaled square
loss with ``kappa = 1`` and ``beta = 15`` (class-incremental) or ``5`` (data-incremental), AdamW
with weight decay 0 at learning rate 1e-4 (1e-3 in their ViT script, ``tmc_vit``), the rate
multiplied by 0.1 at 50% and 80% of training, and a penalty ``1e-5 * ||d||_2`` (unsquared).
``adam_ce`` is a plain alternative: cross-entropy, Adam at a constant rate, no penalty.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from tangent.losses import RescaledSquareLoss, get


class Optimizer(str, enum.Enum):
    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """``loss``: a name of ``tangent.losses.LOSSES`` ('rsl' uses ``kappa``/``beta``);
    ``decay_at``: fractions of training in (0, 1) where the rate is multiplied by
    ``decay_factor``; ``penalty``: the weight of ``||d||_2``."""

    loss: str = "rsl"
    kappa: float = 1.0
    beta: float = 15.0
    optimizer: Optimizer = Optimizer.ADAMW
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    decay_at: tuple[float, ...] = (0.5, 0.8)
    decay_factor: float = 0.1
    penalty: float = 1e-5

    def __post_init__(self):
        get(self.loss)
        object.__setattr__(self, "optimizer", Optimizer(self.optimizer))
        object.__setattr__(self, "decay_at", tuple(self.decay_at))
        RescaledSquareLoss(self.kappa, self.beta)  # validates kappa and beta
        _check("learning_rate", self.learning_rate, positive=True)
        _check("decay_factor", self.decay_factor, positive=True)
        _check("weight_decay", self.weight_decay, positive=False)
        _check("penalty", self.penalty, positive=False)
        if any(not 0 < f < 1 for f in self.decay_at) or list(self.decay_at) != sorted(set(self.decay_at)):
            raise ValueError(f"decay_at={self.decay_at!r}: expected increasing fractions in (0, 1)")

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def loss_fn(self):
        """The loss: ``RescaledSquareLoss(kappa, beta)`` for 'rsl', else ``LOSSES[loss]``."""
        return RescaledSquareLoss(self.kappa, self.beta) if self.loss == "rsl" else get(self.loss)

    def make_optimizer(self, steps: int) -> optax.GradientTransformation:
        """The optax optimizer for a run of ``steps`` steps: AdamW (Adam, SGD) directions, scaled
        by ``-learning_rate * decay_factor^(boundaries passed)``, boundaries at
        ``round(f * steps)`` for ``f`` in ``decay_at``.

        The learning rate and the boundaries live in the optimizer state, not in its update
        function: recipes that differ only in them (a learning-rate grid, runs of other lengths)
        share one ``update``, and ``tangent.fit`` compiles its training loop once for all of them.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps={steps!r}: expected a positive integer")
        base = _base_optimizer(self.optimizer, self.weight_decay, self.decay_factor, len(self.decay_at))
        boundaries = jnp.asarray([max(1, round(f * steps)) for f in self.decay_at], jnp.int32)
        step_size = jnp.asarray(-self.learning_rate, jnp.float32)

        def init(params):
            *inner, decay = base.init(params)
            return (*inner, decay._replace(boundaries=boundaries, step_size=step_size))

        return optax.GradientTransformation(init, base.update)

    def fit_kwargs(self, steps: int) -> dict:
        """``loss``, ``optimizer`` and ``penalty`` for ``tangent.fit``/``fit_components``."""
        return {"loss": self.loss_fn(), "optimizer": self.make_optimizer(steps), "penalty": self.penalty}


def _check(name: str, value, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise ValueError(f"{name}={value!r}: expected a {'positive' if positive else 'non-negative'} "
                         "finite number")


class StepDecayState(NamedTuple):
    count: jax.Array  # int32: steps taken
    boundaries: jax.Array  # int32 (len(decay_at),)
    step_size: jax.Array  # float32: -learning_rate


def _scale_by_step_decay(factor: float, num_boundaries: int) -> optax.GradientTransformation:
    """``updates * step_size * factor^#{b : count >= b}``, with ``step_size`` and the boundaries
    read from the state (set by ``Recipe.make_optimizer``)."""

    def init(params):
        del params
        return StepDecayState(jnp.zeros([], jnp.int32), jnp.zeros([num_boundaries], jnp.int32),
                              jnp.zeros([], jnp.float32))

    def update(updates, state, params=None):
        del params
        scale = state.step_size * factor ** jnp.sum(state.count >= state.boundaries)
        updates = jax.tree.map(lambda u: (scale * u).astype(u.dtype), updates)
        return updates, state._replace(count=state.count + 1)

    return optax.GradientTransformation(init, update)


@functools.lru_cache(maxsize=64)
def _base_optimizer(optimizer: Optimizer, weight_decay: float, decay_factor: float,
                    num_boundaries: int) -> optax.GradientTransformation:
    """The update directions of ``optimizer`` (AdamW: Adam plus ``weight_decay * w``, scaled with
    the rate as in PyTorch and optax), then the step decay; one object per structure."""
    direction = {Optimizer.ADAM: [optax.scale_by_adam()],
                 Optimizer.ADAMW: [optax.scale_by_adam(), optax.add_decayed_weights(weight_decay)],
                 Optimizer.SGD: []}[optimizer]
    return optax.chain(*direction, _scale_by_step_decay(decay_factor, num_boundaries))


RECIPES = {
    "tmc_class": Recipe(beta=15.0),
    "tmc_data": Recipe(beta=5.0),
    "tmc_vit": Recipe(beta=15.0, learning_rate=1e-3),
    "adam_ce": Recipe(loss="cross_entropy", optimizer=Optimizer.ADAM, learning_rate=1e-3, decay_at=(),
                      penalty=0.0),
}


def recipe(name: str, **changes) -> Recipe:
    """The preset ``name`` of ``RECIPES`` with ``changes`` applied."""
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r}: expected one of {sorted(RECIPES)}")
    return RECIPES[name].replace(**changes)
