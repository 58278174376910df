"""Linearized (tangent) networks: linearize, train, compose and forget tangent vectors.

    model = tangent.linearize(apply_fn, params0, trainable=tangent.taft(params0, k=1))
    result = tangent.fit(model, images, labels, optimizer=optax.adam(1e-3), steps=100)
    logits = model(result.tangent, images)          # f(x; w0) + J(x) d

See ``tangent.linearize`` (the model), ``tangent.selection`` (choosing parameters),
``tangent.train`` (fitting), ``tangent.composition`` (TMC) and ``tangent.privacy`` (DP-SGD).
"""

from tangent.adapters import from_linen, from_nnx
from tangent.composition import Composition, compose
from tangent.linearize import TangentModel, linearize
from tangent.losses import cross_entropy, mse, rescaled_square_loss
from tangent.privacy import DPSGD, clip, epsilon, per_example_grads, privatize
from tangent.selection import paths, select, taft
from tangent.train import FitResult, compute_features, fit, fit_components
from tangent.vectors import TangentVector, dot, norm, stack, unstack, weighted_sum

__all__ = [
    "Composition", "DPSGD", "FitResult", "TangentModel", "TangentVector", "clip", "compose",
    "compute_features", "cross_entropy", "dot", "epsilon", "fit", "fit_components", "from_linen",
    "from_nnx", "linearize", "mse", "norm", "paths", "per_example_grads", "privatize",
    "rescaled_square_loss", "select", "stack", "taft", "unstack", "weighted_sum",
]
