"""Tangent models of Flax modules (Linen and NNX), in eval mode with non-parameter state frozen.

Both adapters linearize the whole variable tree ``{"params": ..., <other collections>}``
but only ever select paths under ``params/``: ``batch_stats``, caches and RNG counters are
frozen constants, and the module is never allowed to update them. Selectors see the full
path, e.g. ``params/Dense_0/kernel``.

``method(module, *inputs)`` says how to call the module (default ``module(*inputs)``);
pass e.g. ``method=lambda m, x: m(x, train=False)`` for eval-mode flags. ``features``,
also ``(module, *inputs) -> h``, computes cached frozen features; ``method`` then receives
``h`` (see ``tangent.linearize``).
"""

from __future__ import annotations

from collections.abc import Callable

from tangent import selection
from tangent.linearize import TangentModel, linearize


def _params_only(trainable: selection.Selector) -> Callable[[str], bool]:
    keep = selection.predicate(trainable)
    return lambda path: path.startswith("params/") and keep(path)


def from_linen(module, variables, trainable: selection.Selector = None, *,
               method: Callable | str | None = None,
               features: Callable | str | None = None) -> TangentModel:
    """Tangent model of a Linen ``module`` around ``variables`` (all collections, eval mode)."""
    if "params" not in variables:
        raise ValueError(f"variables must hold a 'params' collection; got collections {sorted(variables)}")

    def apply_fn(v, *inputs):
        return module.apply(v, *inputs, method=method or "__call__")

    features_fn = None
    if features is not None:
        def features_fn(v, *inputs):
            return module.apply(v, *inputs, method=features)

    return linearize(apply_fn, dict(variables), _params_only(trainable), features_fn=features_fn)


def from_nnx(module, trainable: selection.Selector = None, *,
             method: Callable | None = None, features: Callable | None = None) -> TangentModel:
    """Tangent model of an NNX ``module`` around its current state, in eval mode.

    The module itself is left untouched: a copy is switched to eval mode and split into a
    graph definition, ``nnx.Param`` state (``params/...``) and all other state (``state/...``).
    """
    from flax import nnx

    copy = nnx.clone(module)
    copy.eval()
    graphdef, params, rest = nnx.split(copy, nnx.Param, ...)
    variables = {"params": nnx.to_pure_dict(params), "state": nnx.to_pure_dict(rest)}
    call = method or (lambda m, *inputs: m(*inputs))

    def apply_fn(v, *inputs):
        return call(nnx.merge(graphdef, v["params"], v["state"]), *inputs)

    features_fn = None
    if features is not None:
        def features_fn(v, *inputs):
            return features(nnx.merge(graphdef, v["params"], v["state"]), *inputs)

    return linearize(apply_fn, variables, _params_only(trainable), features_fn=features_fn)
