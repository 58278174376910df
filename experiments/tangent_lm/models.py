"""The tangent model of a `bmojo.LanguageModel` (TAFT-k), its non-linear counterpart, the loss and
bits per byte.

TAFT-k of an L-block language model linearizes the last k blocks, the final norm and the head::

    h = blocks_{L-k-1} o ... o blocks_0 o embed (tokens)       frozen features, computed once
    f_lin(tokens; d) = f(h; w0) + J(h) d,   f(h; w) = head(norm(blocks_{L-1} o ... o blocks_{L-k}(h)))

so the JVP runs through the selective scan / SSD / B'MOJO attention of the last k blocks only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bmojo
import tangent
from experiments import harness
from experiments.language_model.train import eval_batches
from experiments.tangent_composition.task import Nonlinear

BLOCK = r"blocks_(\d+)"
EXTRA = ("norm", "head")


def _features(k: int):
    def features(module: bmojo.LanguageModel, tokens):
        x = module._embed(tokens)
        for block in module.blocks[: len(module.blocks) - k]:
            x, _ = block(x)
        return x
    return features


def _head(k: int):
    def head(module: bmojo.LanguageModel, x):
        for block in module.blocks[len(module.blocks) - k:]:
            x, _ = block(x)
        return module._logits(x)
    return head


def taft_model(model_config: bmojo.ModelConfig, params, k: int) -> tangent.TangentModel:
    """TAFT-k tangent model of ``LanguageModel(model_config)`` around ``params``:
    ``model(d, tokens (B, T)) -> logits (B, T, vocab)``; features (B, T, d_model) after block L-k-1.
    ValueError unless 1 <= k <= n_layers and the head is untied (its own parameters)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= model_config.n_layers:
        raise ValueError(f"k = {k!r}; expected an integer in [1, n_layers = {model_config.n_layers}]")
    if model_config.tie_embeddings:
        raise ValueError("tie_embeddings = True: TAFT-k adapts the head, which is then the embedding "
                         "(read by every block); use a model with its own head")
    module = bmojo.LanguageModel(model_config)
    trainable = tangent.taft(params, k, block=BLOCK, extra=EXTRA)
    return tangent.from_linen(module, params, trainable, method=_head(k), features=_features(k))


def nonlinear(model: tangent.TangentModel) -> Nonlinear:
    """The network itself at ``w0 + d`` (same parameters, same cached features)."""
    return Nonlinear.of(model)


def lm_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-byte cross-entropy (nats): logits (B, T, V), targets int (B, T)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets).mean()


def log_probs(model: tangent.TangentModel, d, inputs) -> jax.Array:
    """``log softmax(model(d, inputs))`` (B, T, V)."""
    return jax.nn.log_softmax(model(d, inputs), -1)


def ensemble_log_probs(model: tangent.TangentModel, ds, inputs) -> jax.Array:
    """``log mean_k softmax(model(d_k, inputs))`` over stacked (K, ...) ``ds``: the ensemble averages
    the members' next-byte distributions (the frozen features computed once)."""
    h = model.features(inputs)
    logp = jax.vmap(lambda d: jax.nn.log_softmax(model.apply_features(d, h), -1))(ds)
    return jax.nn.logsumexp(logp, axis=0) - math.log(logp.shape[0])


def _metric(log_probs_fn):
    def metric_fn(model_and_d, batch):
        logp = log_probs_fn(*model_and_d, batch["inputs"])
        nats = -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0] * batch["weight"][:, None]
        return {"nats": nats.sum(), "bytes": jnp.sum(batch["weight"]) * nats.shape[1]}
    return metric_fn


_METRICS = {False: _metric(log_probs), True: _metric(ensemble_log_probs)}


def bits_per_byte(model: tangent.TangentModel, d, windows: np.ndarray, batch_size: int, *,
                  ensemble: bool = False) -> float:
    """Bits per byte of the byte ``windows`` (n, T + 1): sum over predicted bytes of -log2 p under
    ``model(d, .)`` (``ensemble``: the mean distribution of stacked (K, ...) ``d``) / their count."""
    sums = harness.evaluate(_METRICS[ensemble], (model, d), eval_batches(windows, batch_size))
    return sums["nats"] / math.log(2) / sums["bytes"]
