"""Linearized (tangent) networks: linearize, train, compose and forget tangent vectors.

    model = tangent.linearize(apply_fn, params0, trainable=tangent.taft(params0, k=1))
    result = tangent.fit(model, images, labels, steps=100, **tangent.recipe("tmc_data").fit_kwargs(100))
    logits = model(result.tangent, images)          # f(x; w0) + J(x) d

See ``tangent.linearize`` (the model), ``tangent.selection`` (choosing parameters),
``tangent.train`` (fitting), ``tangent.recipes`` (the authors' training settings),
``tangent.composition`` (TMC), ``tangent.intcl`` (continual learning), ``tangent.shard_graph``
(SAFE forgetting) and ``tangent.privacy`` (DP-SGD).
"""

from tangent.adapters import from_linen, from_nnx
from tangent.composition import Composition, compose
from tangent.intcl import IntCLResult, fit_intcl, reservoir
from tangent.linearize import TangentModel, linearize
from tangent.losses import RescaledSquareLoss, cross_entropy, mse, rescaled_square_loss
from tangent.privacy import DPSGD, Sampling, clip, epsilon, per_example_grads, privatize
from tangent.recipes import RECIPES, Recipe, recipe
from tangent.selection import paths, select, taft
from tangent.shard_graph import ShardedComposition, ShardGraph
from tangent.train import FitResult, compute_features, fit, fit_components
from tangent.vectors import TangentVector, dot, norm, stack, unstack, weighted_sum

__all__ = [
    "RECIPES", "Composition", "DPSGD", "FitResult", "IntCLResult", "Recipe", "RescaledSquareLoss",
    "Sampling", "ShardGraph", "ShardedComposition", "TangentModel", "TangentVector", "clip", "compose",
    "compute_features", "cross_entropy", "dot", "epsilon", "fit", "fit_components", "from_linen",
    "fit_intcl", "from_nnx", "linearize", "mse", "norm", "paths", "per_example_grads", "privatize", "recipe",
    "rescaled_square_loss", "reservoir", "select", "stack", "taft", "unstack", "weighted_sum",
]
