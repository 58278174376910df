"""The tangent (linearized) model of any ``apply_fn(params, *inputs)``.

For pre-trained parameters ``w0`` and a trainable subset ``S`` of them (chosen by path, see
``tangent.selection``), the tangent model is the first-order Taylor expansion in ``S``::

    f_lin(x; d) = f(x; w0) + J_S(x) d,      J_S(x) = d f(x; w) / d w_S  at w = w0

computed with one ``jax.jvp``. The parameters outside ``S`` are constants of that JVP, so
JAX's symbolic-zero tangents skip every operation that does not depend on ``S``: with only
the last block and the head in ``S`` (TAFT-1), the cost is one forward pass plus the JVP of
that block. ``f_lin`` is exactly linear in ``d``.

Caching frozen features: when ``S`` lies past some point of the network, split the network
there: ``features_fn(params, *inputs) -> h`` computes the part that reads no parameter of
``S``, and ``apply_fn(params, h)`` the rest (``apply_fn`` then takes the single argument
``h``, any pytree). ``model.features(*inputs)`` is computed once per input and reused by
``model.apply_features(d, h)``; ``model(d, *inputs)`` chains the two. Without
``features_fn`` the features are the input tuple itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from tangent import selection
from tangent.vectors import TangentVector


@jax.tree_util.register_pytree_node_class
class TangentModel:
    """``f_lin(x; d)`` around ``params0`` (a pytree: pass it through ``jit``/``vmap`` freely).

    Attributes: ``apply_fn``, ``params0``, ``features_fn`` (or None), ``trainable`` (the
    tuple of linearized parameter paths).
    """

    def __init__(self, apply_fn: Callable, params0, trainable: tuple[str, ...],
                 features_fn: Callable | None = None, all_paths: tuple[str, ...] | None = None):
        self.apply_fn = apply_fn
        self.params0 = params0
        self.trainable = tuple(trainable)
        self.features_fn = features_fn
        self._all_paths = tuple(all_paths) if all_paths is not None else tuple(selection.paths(params0))

    def tree_flatten(self):
        return (self.params0,), (self.apply_fn, self.trainable, self.features_fn, self._all_paths)

    @classmethod
    def tree_unflatten(cls, aux, children):
        apply_fn, trainable, features_fn, all_paths = aux
        return cls(apply_fn, children[0], trainable, features_fn, all_paths)

    def __repr__(self) -> str:
        return (f"TangentModel({len(self.trainable)} of {len(self._all_paths)} parameter arrays "
                f"linearized, cached features: {self.features_fn is not None})")

    # Parameter bookkeeping.
    def _leaves(self) -> dict[str, jax.Array]:
        return dict(zip(self._all_paths, jax.tree.leaves(self.params0)))

    def primal(self) -> TangentVector:
        """``w0`` restricted to the trainable paths."""
        leaves = self._leaves()
        return TangentVector({p: leaves[p] for p in self.trainable})

    def zeros(self) -> TangentVector:
        """The zero tangent vector (``f_lin(x; 0) = f(x; w0)``)."""
        return jax.tree.map(jnp.zeros_like, self.primal())

    def merge(self, w: Mapping[str, jax.Array]):
        """``params0`` with the trainable leaves replaced by ``w``'s arrays."""
        leaves, treedef = jax.tree.flatten(self.params0)
        index = {p: i for i, p in enumerate(self._all_paths)}
        for path, value in w.items():
            leaves[index[path]] = value
        return jax.tree.unflatten(treedef, leaves)

    def around(self, d: Mapping[str, jax.Array]) -> "TangentModel":
        """The same kind of model re-linearized at ``w0 + d`` (``params0`` moved by ``d``; the
        frozen parameters, and so the cached features, are unchanged)."""
        w = jax.tree.map(jnp.add, self.primal(), self.as_vector(d))
        return type(self)(self.apply_fn, self.merge(w), self.trainable, self.features_fn, self._all_paths)

    def as_vector(self, d: Mapping[str, jax.Array]) -> TangentVector:
        """``d`` as a ``TangentVector`` in the parameters' dtypes; ValueError unless it holds
        exactly the trainable paths with the parameters' shapes."""
        if not isinstance(d, Mapping) or set(d) != set(self.trainable):
            got = sorted(d) if isinstance(d, Mapping) else type(d).__name__
            raise ValueError(f"d must map exactly the trainable paths {sorted(self.trainable)}; got {got}")
        w0 = self.primal()
        for path in self.trainable:
            if tuple(d[path].shape) != tuple(w0[path].shape):
                raise ValueError(f"d[{path!r}] has shape {tuple(d[path].shape)}; expected "
                                 f"{tuple(w0[path].shape)} (the parameter's shape)")
        return TangentVector({p: jnp.asarray(d[p]).astype(w0[p].dtype) for p in self.trainable})

    # Evaluation.
    def features(self, *inputs):
        """Frozen features ``features_fn(params0, *inputs)`` (the input tuple without one)."""
        if self.features_fn is None:
            return inputs
        return self.features_fn(self.params0, *inputs)

    def _head(self, params, features):
        return self.apply_fn(params, *features) if self.features_fn is None else self.apply_fn(params, features)

    def jvp_features(self, d: Mapping[str, jax.Array], features):
        """``(f(x; w0), J_S(x) d)`` from cached ``features``."""
        d = self.as_vector(d)
        return jax.jvp(lambda w: self._head(self.merge(w), features), (self.primal(),), (d,))

    def apply_features(self, d: Mapping[str, jax.Array], features):
        """``f(x; w0) + J_S(x) d`` from cached ``features``."""
        out, tangent_out = self.jvp_features(d, features)
        return jax.tree.map(jnp.add, out, tangent_out)

    def jvp(self, d: Mapping[str, jax.Array], *inputs):
        """``(f(x; w0), J_S(x) d)``."""
        return self.jvp_features(d, self.features(*inputs))

    def __call__(self, d: Mapping[str, jax.Array], *inputs):
        """``f_lin(x; d) = f(x; w0) + J_S(x) d``."""
        return self.apply_features(d, self.features(*inputs))

    def apply_nonlinear(self, d: Mapping[str, jax.Array], *inputs):
        """The original network at ``w0 + d`` (for comparison; not linear in ``d``)."""
        d = self.as_vector(d)
        w = jax.tree.map(jnp.add, self.primal(), d)
        return self._head(self.merge(w), self.features(*inputs))


def linearize(apply_fn: Callable, params0, trainable: selection.Selector = None, *,
              features_fn: Callable | None = None) -> TangentModel:
    """The tangent model of ``apply_fn(params, *inputs)`` around ``params0``.

    ``trainable`` selects the linearized parameters by path (regex, list of regexes,
    predicate, or None for all; see ``tangent.selection``). ``features_fn`` optionally
    splits off the frozen front of the network for caching (see the module docstring).
    """
    return TangentModel(apply_fn, params0, selection.select(params0, trainable), features_fn)
