"""Tangent Model Composition (TMC): components as tangent vectors, composed by weighted sums.

Because ``f_lin(x; d)`` is linear in ``d``, for weights ``w_i`` summing to 1::

    f_lin(x; sum_i w_i d_i) = sum_i w_i f_lin(x; d_i)

so the composed model is the weighted ensemble of its components at the cost of one tangent
forward pass. Forgetting a component removes its term: ``Composition`` always rebuilds the
sum from the components it holds (in insertion order), so after ``remove`` its outputs are
identical to those of a composition that never held the component.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tangent.linearize import TangentModel
from tangent.vectors import TangentVector, weighted_sum


def compose(components: Sequence[Mapping], weights: Sequence[float] | None = None) -> TangentVector:
    """``sum_i weights[i] * components[i]``; default weights ``1/K`` (the ensemble mean)."""
    if not components:
        raise ValueError("compose needs at least one component")
    weights = [1.0 / len(components)] * len(components) if weights is None else list(weights)
    return TangentVector(weighted_sum([TangentVector(c) for c in components], weights))


class Composition:
    """Named tangent components of one ``TangentModel``, composed with (normalised) weights.

    ``normalize=True`` divides the weights by their sum, so that the composition is the
    weighted average (ensemble) of its components; ``False`` uses the raw weighted sum.
    """

    def __init__(self, model: TangentModel, normalize: bool = True):
        self.model = model
        self.normalize = normalize
        self._components: dict[str, TangentVector] = {}
        self._weights: dict[str, float] = {}

    @property
    def names(self) -> list[str]:
        return list(self._components)

    def __len__(self) -> int:
        return len(self._components)

    def __contains__(self, name: str) -> bool:
        return name in self._components

    def __getitem__(self, name: str) -> TangentVector:
        return self._components[name]

    def add(self, name: str, vector: Mapping, weight: float = 1.0) -> "Composition":
        """Add component ``name`` (ValueError if present or if its paths differ from the model's)."""
        if name in self._components:
            raise ValueError(f"component {name!r} is already in the composition; remove it first")
        vector = self.model._check(vector)
        self._components[name] = vector
        self._weights[name] = float(weight)
        return self

    def remove(self, name: str) -> TangentVector:
        """Forget component ``name``; returns its vector."""
        if name not in self._components:
            raise ValueError(f"no component named {name!r}; components: {self.names}")
        del self._weights[name]
        return self._components.pop(name)

    def weights(self) -> dict[str, float]:
        total = sum(self._weights.values())
        if self.normalize and total == 0:
            raise ValueError("weights sum to zero; cannot normalise")
        return {n: w / total if self.normalize else w for n, w in self._weights.items()}

    def vector(self) -> TangentVector:
        """The composed tangent vector (zeros when empty)."""
        if not self._components:
            return self.model.zeros()
        weights = self.weights()
        return compose([self._components[n] for n in self.names], [weights[n] for n in self.names])

    def __call__(self, *inputs):
        """``f_lin(x; composed vector)``: one tangent forward pass."""
        return self.model(self.vector(), *inputs)

    def save(self, directory: str | Path) -> None:
        """Write the components and weights under ``directory`` (orbax-checkpoint + JSON)."""
        import orbax.checkpoint as ocp

        directory = Path(directory).absolute()
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {n: {p: np.asarray(v) for p, v in c.items()} for n, c in self._components.items()}
        meta = {"names": self.names, "weights": self._weights, "normalize": self.normalize}
        (directory / "composition.json").write_text(json.dumps(meta, indent=2))
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(directory / "components", {f"c{i}": arrays[n] for i, n in enumerate(self.names)},
                      force=True)

    @classmethod
    def load(cls, directory: str | Path, model: TangentModel) -> "Composition":
        """Read a composition written by ``save`` for ``model``."""
        import orbax.checkpoint as ocp

        directory = Path(directory).absolute()
        meta = json.loads((directory / "composition.json").read_text())
        comp = cls(model, normalize=meta["normalize"])
        if not meta["names"]:
            return comp
        with ocp.StandardCheckpointer() as ckpt:
            arrays = ckpt.restore(directory / "components")
        for i, name in enumerate(meta["names"]):
            comp.add(name, {p: jnp.asarray(v) for p, v in arrays[f"c{i}"].items()}, meta["weights"][name])
        return comp
