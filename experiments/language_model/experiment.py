"""The experiment: the corpus, every run (preset x learning rate x seed), learning-rate selection on
validation, then test, extrapolation and samples of the selected runs, and the report.

Metrics records (metrics.jsonl), besides the training records of `harness.fit`:
    {"run", "split": "valid", "length": T, "bpb", "nats_per_token", "tokens", "bytes"}
    {"run", "split": "test", "length": L, ...} for L in T * extrapolation (the longest with
        "bucket_bpb", the bits per byte of each range of positions)
    {"run", "sample": j, "prompt": str, "text": str}
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import bmojo
from experiments import harness
from experiments.data import text
from experiments.language_model import report
from experiments.language_model.config import Config, Run
from experiments.language_model.models import check_length, model_config
from experiments.language_model.train import (
    bits_per_byte,
    make_loss_fn,
    make_metric_fn,
    optimizer,
    samples,
    train_batch,
)

RESUMABLE = ("models", "learning_rates", "seeds", "out", "checkpoint_every", "log_every",
             "progress", "tensorboard")
"""Config fields that may change when rerunning into the same results folder (the others change
results; new models, learning rates or seeds add runs)."""
TOKENIZER_FILE = "tokenizer.json"


@dataclasses.dataclass(frozen=True)
class Data:
    """The token streams, the bytes per token, and the fixed evaluation windows (eval_windows, max_len
    + 1) of the validation and test splits."""

    corpus: text.Corpus
    tokenizer: text.Tokenizer
    windows: dict[str, np.ndarray]


def vocab_size(config: Config) -> int:
    return 256 if config.tokenizer == "byte" else config.bpe_vocab


def plan(config: Config) -> list[Run]:
    return [Run(m, lr, s) for m in config.models for lr in config.learning_rates for s in config.seeds]


def make_tokenizer(config: Config, documents: dict[str, list[str]], folder: pathlib.Path) -> text.Tokenizer:
    """Bytes, or BPE: read from the results folder if a previous run saved it, else trained on the
    first `bpe_train_chars` characters of the training split (saved later, with the results)."""
    if config.tokenizer == "byte":
        return text.ByteTokenizer()
    if (folder / TOKENIZER_FILE).exists():
        return text.BpeTokenizer.load(folder / TOKENIZER_FILE)
    sample, total = [], 0
    for doc in documents["train"]:
        sample.append(doc[: config.bpe_train_chars - total])
        total += len(sample[-1])
        if total >= config.bpe_train_chars:
            break
    return text.BpeTokenizer.train(sample, config.bpe_vocab)


def load_data(config: Config, folder: pathlib.Path) -> Data:
    """Documents, tokenizer, token streams and evaluation windows; `text.MissingDataError` if the
    corpus is not installed or prepared, ValueError if a split holds token ids outside the models'
    vocabulary or is too short for the windows."""
    documents = text.load_documents(config.dataset, valid_plays=config.valid_plays,
                                    test_plays=config.test_plays, data_dir=config.data_dir,
                                    max_bytes=config.max_bytes)
    tokenizer = make_tokenizer(config, documents, folder)
    corpus = text.encode_documents(tokenizer, documents)
    vocab = vocab_size(config)
    for split, stream in corpus.streams.items():
        bmojo.check_tokens(stream, vocab, name=f"the {split!r} token stream", layout="(length,)")
        need = config.max_len + 1 if split != "train" else config.seq_len + 1
        if len(stream) < need:
            raise ValueError(f"the {split!r} split has {len(stream)} tokens; the windows need {need} "
                             "(seq_len * max(extrapolation) + 1 for evaluation)")
    token_bytes = np.zeros(vocab, np.int32)  # a BPE trained on little text may have fewer tokens
    token_bytes[: min(vocab, corpus.vocab_size)] = corpus.token_bytes[:vocab]
    corpus = text.Corpus(corpus.streams, token_bytes)
    windows = {s: text.spaced_windows(corpus.streams[s], config.eval_windows, config.max_len)
               for s in ("valid", "test")}
    return Data(corpus, tokenizer, windows)


def train(config: Config, run: Run, data: Data, results: harness.Results):
    """Train `run` (resuming from its checkpoint; a finished run is restored) -> (model config, params)."""
    model_cfg = model_config(config, run.model, vocab_size(config))
    model = bmojo.LanguageModel(model_cfg)
    params = jax.jit(model.init)(jax.random.key(run.seed), jnp.zeros((1, config.seq_len), jnp.int32))
    opt = optimizer(config, run.learning_rate)
    stream = data.corpus.streams["train"]
    state = harness.fit(
        harness.TrainState.create(params, opt, run.seed),
        harness.make_train_step(make_loss_fn(model, data.corpus.token_bytes), opt),
        lambda step: train_batch(config, stream, run.seed, step),
        steps=config.steps, param_rule=harness.shard_largest_axis() if config.fsdp else None,
        checkpoint_dir=str(results.path / "checkpoints" / run.name),
        checkpoint_every=config.checkpoint_every, results=results, run=run.name,
        log_every=config.log_every, progress=config.progress)
    return model_cfg, state.params


def evaluate_run(config: Config, run: Run, model_cfg, params, data: Data, results, *,
                 valid: bool, test: bool) -> float | None:
    """Log (with `valid`) the validation bits per byte at the training length and (with `test`) the
    test bits per byte at every extrapolation length (the longest also per position bucket) and the
    samples. Returns the validation bits per byte (None without `valid`)."""
    model = bmojo.LanguageModel(model_cfg)
    plain = make_metric_fn(model, data.corpus.token_bytes)
    evaluate = functools.partial(bits_per_byte, model_config=model_cfg, params=params,
                                 batch_size=config.eval_batch_size, name=run.model)
    bpb = None
    if valid:
        out = evaluate(plain, windows=text.split_windows(data.windows["valid"], config.seq_len))
        results.log({"run": run.name, "split": "valid", "length": config.seq_len, **out})
        bpb = out["bpb"]
    if not test:
        return bpb
    for multiple in sorted(config.extrapolation):
        length = multiple * config.seq_len
        metric_fn = plain if length < config.max_len else make_metric_fn(
            model, data.corpus.token_bytes, config.position_buckets)
        out = evaluate(metric_fn, windows=text.split_windows(data.windows["test"], length))
        results.log({"run": run.name, "split": "test", "length": length, **out})
    if config.samples:
        prompts = data.windows["test"][: config.samples, : config.prompt_len]
        generated = samples(model_cfg, params, prompts, config.sample_len,
                            temperature=config.temperature, seed=run.seed, name=run.model)
        for j, (prompt, tokens) in enumerate(zip(prompts, generated)):
            results.log({"run": run.name, "sample": j, "prompt": data.tokenizer.decode(prompt),
                         "text": data.tokenizer.decode(tokens)})
    return bpb


def check(config: Config, results: harness.Results | None = None) -> None:
    """ValueError, before anything is written, if a model cannot take the longest length or the
    results folder holds runs with other settings."""
    for name in config.models:
        check_length(model_config(config, name, vocab_size(config)), config.max_len, name)
    check_resumable(config, results or harness.Results(config.out))


def check_resumable(config: Config, results: harness.Results) -> None:
    """ValueError if `results` holds runs made with other settings than `config` (only the fields in
    `RESUMABLE` may change between runs into the same folder)."""
    record = results.read_config()
    if record is None:
        return
    before = record["config"]
    now = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = [k for k in now if k not in RESUMABLE and before.get(k) != now[k]]
    if changed:
        raise ValueError(
            f"out {str(results.path)!r} holds runs with other settings ("
            + ", ".join(f"{k}={before.get(k)!r}" for k in changed)
            + "); choose another --out or remove that folder")


def logged(results: harness.Results) -> dict[str, dict]:
    """{run: {"valid": bpb, "test": {length: record}, "samples": {j: record}}} from metrics.jsonl."""
    done: dict[str, dict] = {}
    for r in results.read_metrics():
        entry = done.setdefault(r["run"], {"test": {}, "samples": {}})
        if r.get("split") == "valid":
            entry["valid"] = r["bpb"]
        elif r.get("split") == "test":
            entry["test"][r["length"]] = r
        elif "sample" in r:
            entry["samples"][r["sample"]] = r
    return done


def tested(config: Config, entry: dict) -> bool:
    lengths = {m * config.seq_len for m in config.extrapolation}
    return lengths <= set(entry.get("test", ())) and set(range(config.samples)) <= set(entry.get("samples", ()))


def select(config: Config, model: str, valid: dict[str, float]) -> float:
    """The learning rate of `model` with the lowest mean validation bits per byte over the seeds."""
    return min(config.learning_rates,
               key=lambda lr: np.mean([valid[Run(model, lr, s).name] for s in config.seeds]))


def run(config: Config) -> pathlib.Path:
    """Train, select, test and report every model of `config`; returns the results folder."""
    folder = pathlib.Path(config.out)
    results = harness.Results(folder, tensorboard=config.tensorboard)  # (creates the folder only when it first writes)
    check(config, results)
    data = load_data(config, folder)
    results.write_config(config)
    if isinstance(data.tokenizer, text.BpeTokenizer) and not (folder / TOKENIZER_FILE).exists():
        data.tokenizer.save(folder / TOKENIZER_FILE)  # (the folder exists: config.json is in it)
    done = logged(results)
    single = len(config.learning_rates) == 1  # the learning rate is known before validation
    chosen = {}
    for model in config.models:
        trained = {}  # this model's runs trained (or restored) in this process: (model config, params)
        runs = [r for r in plan(config) if r.model == model]
        valid = {r.name: done.get(r.name, {}).get("valid") for r in runs}
        tested_now = set()
        for r in runs:
            if valid[r.name] is None:
                trained[r.name] = train(config, r, data, results)
                test = single and not tested(config, done.get(r.name, {}))
                valid[r.name] = evaluate_run(config, r, *trained[r.name], data, results, valid=True,
                                             test=test)
                tested_now |= {r.name} if test else set()
        chosen[model] = select(config, model, valid)
        for r in runs:
            if r.learning_rate == chosen[model] and r.name not in tested_now \
                    and not tested(config, done.get(r.name, {})):
                model_cfg, params = trained.get(r.name) or train(config, r, data, results)
                evaluate_run(config, r, model_cfg, params, data, results, valid=False, test=True)
    report.write(config, chosen, results, data)
    return folder
