"""One trial by Zoology's protocol: epochs over a fixed training set, validation accuracy after every
epoch, early stop at `Config.early_stop`, then test accuracy per number of pairs.

The loss is the cross-entropy at the query positions only (plus the learned predictor's auxiliary
loss when a model has one),

    loss = sum_t mask_t CE(logits_t, target_t) / sum_t mask_t  +  aux

and the optimizer AdamW with cosine decay to 0 over the whole budget (`max_epochs`), no warm-up and
no clipping, as Zoology's trainer. The learning rate lives in the optimizer state, so every trial of
one model shares one compiled training step.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bmojo
from experiments import harness
from experiments.associative_recall.config import Config
from experiments.associative_recall.measure import masked_accuracy
from experiments.associative_recall.plan import Trial, model_config
from experiments.data import mqar

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Data:
    """The fixed training set, the validation set (both mix `train_pairs`), a test set per number of
    pairs and, with `eval_length`, one per number of pairs at that length; all drawn from the
    config's seed (disjoint streams)."""

    train: Batch
    valid: Batch
    test: dict[int, Batch]
    long: dict[int, Batch]


@functools.lru_cache(maxsize=4)
def _data(config: Config, fillers: str) -> Data:
    task = dict(vocab_size=config.vocab_size, seq_len=config.seq_len, power_a=config.power_a, fillers=fillers)
    rng = lambda *stream: np.random.default_rng([config.seed, *stream])  # noqa: E731
    return Data(train=mqar.mixture(rng(0), config.train_examples, num_pairs=config.train_pairs, **task),
                valid=mqar.mixture(rng(1), config.valid_examples, num_pairs=config.train_pairs, **task),
                test={p: mqar.generate(rng(2, p), config.test_examples, num_pairs=p, **task)
                      for p in config.eval_pairs},
                long={p: mqar.generate(rng(4, p), config.test_examples, num_pairs=p,
                                       **(task | {"seq_len": config.eval_length}))
                      for p in config.eval_pairs} if config.eval_length else {})


def data(config: Config, fillers: str | None = None) -> Data:
    """The data sets of `config` with `fillers` (default: the config's)."""
    return _data(config, fillers or config.fillers)


def eval_batches(batch: Batch, size: int) -> list[Batch]:
    """`batch` cut into batches of `size`; the last one padded with sequences whose mask is 0."""
    n = len(batch["inputs"])
    out = []
    for start in range(0, n, size):
        part = {k: v[start:start + size] for k, v in batch.items()}
        pad = size - len(part["inputs"])
        if pad:
            part = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in part.items()}
        out.append(part)
    return out


def steps_per_epoch(config: Config) -> int:
    return config.train_examples // config.batch_size


def train_batch(config: Config, train: Batch, seed: int, step: int) -> Batch:
    """The batch of `step`: epochs visit the training set in a fresh order each (a pure function of
    seed and step, so a resumed trial sees the same data)."""
    per_epoch = steps_per_epoch(config)
    epoch, i = divmod(step, per_epoch)
    order = _order(config.train_examples, config.seed, seed, epoch)
    idx = order[i * config.batch_size:(i + 1) * config.batch_size]
    return {k: v[idx] for k, v in train.items()}


@functools.lru_cache(maxsize=2)
def _order(n: int, data_seed: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([data_seed, 3, seed, epoch]).permutation(n)


def optimizer(weight_decay: float, total_steps: int) -> optax.GradientTransformation:
    """AdamW with cosine decay to 0 over `total_steps`; the peak rate is a hyper-parameter in the state
    (`with_learning_rate` sets it)."""
    return optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(weight_decay),
                       optax.scale_by_schedule(optax.cosine_decay_schedule(1.0, max(total_steps, 1))),
                       optax.inject_hyperparams(optax.scale)(step_size=-1.0))


def with_learning_rate(opt_state, learning_rate: float):
    """The optimizer state of `optimizer` with its peak learning rate set."""
    opt_state[-1].hyperparams["step_size"] = jnp.asarray(-learning_rate, jnp.float32)
    return opt_state


@dataclasses.dataclass(frozen=True)
class Compiled:
    """One model's functions, created once so that jit compiles them once for all its trials."""

    model: bmojo.LanguageModel
    opt: optax.GradientTransformation
    train_step: object
    metric_fn: object


@functools.lru_cache(maxsize=None)
def compiled(model: bmojo.ModelConfig, weight_decay: float, total_steps: int) -> Compiled:
    lm = bmojo.LanguageModel(model)

    def loss_fn(params, batch, rng):
        del rng  # no dropout
        logits, aux = lm.apply(params, batch["inputs"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        mask = batch["mask"]
        recall = jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        stats = masked_accuracy(logits, batch["targets"], mask)
        return recall + aux, {"recall_loss": recall, "aux": aux,
                              "accuracy": stats["correct"] / jnp.maximum(stats["count"], 1.0)}

    def metric_fn(params, batch):
        logits, _ = lm.apply(params, batch["inputs"])
        return masked_accuracy(logits, batch["targets"], batch["mask"])

    opt = optimizer(weight_decay, total_steps)
    return Compiled(lm, opt, harness.make_train_step(loss_fn, opt), metric_fn)


def accuracy(fns: Compiled, params, batch: Batch, size: int) -> float:
    sums = harness.evaluate(fns.metric_fn, params, eval_batches(batch, size))
    return sums["correct"] / sums["count"]


def run_trial(config: Config, trial: Trial, results: harness.Results) -> dict:
    """Train and evaluate `trial`; log and return its final record."""
    model = model_config(config, trial.arm)
    sets = data(config, trial.arm.fillers)
    for name, batch in (("training", sets.train), ("validation", sets.valid)):  # ids checked once, on host
        bmojo.check_tokens(batch["inputs"], model.vocab_size, name=f"{name} inputs")
    total = config.max_epochs * steps_per_epoch(config)
    fns = compiled(model, config.weight_decay, total)
    seed = config.seed + trial.seed
    params = fns.model.init(jax.random.key(seed), jnp.zeros((1, config.seq_len), jnp.int32))
    state = harness.TrainState.create(params, fns.opt, seed)
    state = state.replace(opt_state=with_learning_rate(state.opt_state, trial.learning_rate))
    valid = {}

    def stop(step: int, state: harness.TrainState) -> bool:
        valid[step] = accuracy(fns, state.params, sets.valid, config.batch_size)
        results.log({"run": trial.name, "step": step, "valid_accuracy": valid[step]})
        return valid[step] >= config.early_stop

    checkpoints = results.path / "checkpoints" / trial.name.replace(" ", "_").replace("/", "-")
    state = harness.fit(state, fns.train_step, lambda step: train_batch(config, sets.train, seed, step),
                        steps=total, checkpoint_dir=str(checkpoints) if config.checkpoint_every else None,
                        checkpoint_every=config.checkpoint_every, results=results, run=trial.name,
                        log_every=config.log_every, progress=config.progress, stop=stop,
                        stop_every=steps_per_epoch(config))
    steps = int(state.step)
    if steps not in valid:
        valid[steps] = accuracy(fns, state.params, sets.valid, config.batch_size)
    record = {"run": trial.name, "final": True, "arm": trial.arm.name, "learning_rate": trial.learning_rate,
              "seed": trial.seed, "steps": steps, "epochs": steps / steps_per_epoch(config),
              "valid_accuracy": valid[steps],
              "test_accuracy": {str(p): accuracy(fns, state.params, batch, config.batch_size)
                                for p, batch in sets.test.items()}}
    if sets.long:
        record["long_accuracy"] = {str(p): accuracy(fns, state.params, batch, config.batch_size)
                                   for p, batch in sets.long.items()}
    results.log(record)
    return record
