"""Training and evaluation of one model: the loss, the optimizer, the data of each step, bits per
byte over fixed windows (and per position bucket), and samples by recurrent decoding.

Loss of a batch of windows (inputs x, next-token targets y, both (batch, T)):

    loss = mean_{b,t} -log p(y_bt | x_b,<=t)  +  aux

(aux: the auxiliary innovation loss of learned B'MOJO predictors, 0 otherwise). Bits per byte of a
set of windows: sum of the negative log-likelihoods in nats / ln 2 / the bytes the targets stand for.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bmojo
from experiments import harness
from experiments.data import text
from experiments.language_model.config import Config
from experiments.language_model.models import check_length


def optimizer(config: Config, learning_rate: float) -> optax.GradientTransformation:
    """Gradients clipped to global norm `grad_clip`, then AdamW (weight decay `weight_decay`) with a
    linear warm-up over the first `warmup` fraction of the steps and cosine decay to 0."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, round(config.warmup * config.steps), config.steps)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                       optax.adamw(schedule, weight_decay=config.weight_decay))


def make_loss_fn(model: bmojo.LanguageModel, token_bytes: np.ndarray):
    """(params, batch, rng) -> (mean cross-entropy + aux, metrics: nats per token, bits per byte, aux)."""
    token_bytes = jnp.asarray(token_bytes)

    def loss_fn(params, batch, rng):
        del rng  # no dropout
        logits, aux = model.apply(params, batch["inputs"])
        nats = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        bpb = jnp.sum(nats) / math.log(2) / jnp.sum(token_bytes[batch["targets"]])
        return jnp.mean(nats) + aux, {"nats": jnp.mean(nats), "bpb": bpb, "aux": aux}

    return loss_fn


def as_batch(windows: np.ndarray) -> dict[str, np.ndarray]:
    """(n, L + 1) windows -> {"inputs": (n, L), "targets": (n, L)} int32."""
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def train_batch(config: Config, stream: np.ndarray, seed: int, step: int) -> dict[str, np.ndarray]:
    """The training batch of `step` (a pure function of seed and step, so resuming resumes the data,
    and every model of a seed sees the same windows)."""
    rng = np.random.default_rng([seed, 0, step])
    return as_batch(text.random_windows(stream, rng, config.batch_size, config.seq_len))


def make_metric_fn(model: bmojo.LanguageModel, token_bytes: np.ndarray, buckets: int = 0):
    """(params, batch) -> sums over the batch's weighted windows: "nats", "bytes", "tokens", and with
    `buckets` > 0, "nats_<j>" / "bytes_<j>" over the j-th of `buckets` equal ranges of positions."""
    token_bytes = jnp.asarray(token_bytes)

    def metric_fn(params, batch):
        logits, _ = model.apply(params, batch["inputs"])
        weight = batch["weight"][:, None]
        nats = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]) * weight
        nbytes = token_bytes[batch["targets"]] * weight
        sums = {"nats": jnp.sum(nats), "bytes": jnp.sum(nbytes),
                "tokens": jnp.sum(jnp.broadcast_to(weight, nats.shape))}
        if buckets:  # (ValueError from reshape unless buckets divides the length)
            per_nats = nats.reshape(nats.shape[0], buckets, -1).sum(axis=(0, 2))
            per_bytes = nbytes.reshape(nbytes.shape[0], buckets, -1).sum(axis=(0, 2))
            for j in range(buckets):
                sums[f"nats_{j}"], sums[f"bytes_{j}"] = per_nats[j], per_bytes[j]
        return sums

    return metric_fn


def eval_batches(windows: np.ndarray, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Batches of `batch_size` windows with a "weight" (1 real, 0 padding of the last batch)."""
    n = len(windows)
    pad = -n % batch_size
    windows = np.concatenate([windows, np.zeros((pad, windows.shape[1]), windows.dtype)])
    weight = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    return [{**as_batch(windows[i : i + batch_size]), "weight": weight[i : i + batch_size]}
            for i in range(0, len(windows), batch_size)]


def bits_per_byte(metric_fn, model_config: bmojo.ModelConfig, params, windows: np.ndarray, *,
                  batch_size: int, name: str = "model") -> dict:
    """Evaluate `windows` (n, L + 1) with `metric_fn` (from `make_metric_fn`; reuse one per model and
    bucket count: jit caches its compilation per shape): {"bpb", "nats_per_token", "tokens", "bytes"}
    and, for a bucketed `metric_fn`, "bucket_bpb" (the bits per byte of each range of positions).
    ValueError (naming max_len) if the model cannot take length L."""
    check_length(model_config, windows.shape[1] - 1, name)
    sums = harness.evaluate(metric_fn, params, eval_batches(windows, batch_size))
    out = {"bpb": sums["nats"] / math.log(2) / sums["bytes"],
           "nats_per_token": sums["nats"] / sums["tokens"],
           "tokens": int(sums["tokens"]), "bytes": int(sums["bytes"])}
    buckets = sum(k.startswith("nats_") for k in sums)
    if buckets:
        out["bucket_bpb"] = [sums[f"nats_{j}"] / math.log(2) / sums[f"bytes_{j}"] for j in range(buckets)]
    return out


def samples(model_config: bmojo.ModelConfig, params, prompts: np.ndarray, steps: int, *,
            temperature: float, seed: int, name: str = "model") -> np.ndarray:
    """Extend prompts (n, P) by `steps` tokens with recurrent decoding (`bmojo.generate`); returns the
    generated tokens (n, steps). ValueError (naming max_len) if P + steps is too long for the model."""
    check_length(model_config, prompts.shape[1] + steps, name)
    out = bmojo.generate(model_config, params, prompts, steps, temperature=temperature,
                         rng=jax.random.key(seed))
    return np.asarray(out[:, prompts.shape[1]:])
