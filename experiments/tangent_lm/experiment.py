"""The experiment: pretrain (or load) a byte-level LM, adapt it to each domain with a tangent
component and with non-linear fine-tuning, compose, forget, DP-SGD, step costs; then the report.

Metrics records (metrics.jsonl), besides the pretraining records of `harness.fit`:
    {"section": "pretrained", "domain", "split", "bpb"}
    {"section": "adapt", "method", "lr", "seed", "domain", "split", "bpb"}
    {"section": "compose", "seed", "eval": domain or "union", "method", "bpb"}
    {"section": "inference", "n", "method", "gflops", "ms"}
    {"section": "forget", "seed", "domain", "max_abs_diff", "empty_max_abs_diff", "bpb": {...}}
    {"section": "dp", "seed", "domain", "epsilon", "delta", "bpb", "lr"}
    {"section": "cost", "model", "k", "tangent_ms", "nonlinear_ms", "ratio", "backend"}
Trained vectors are kept in OUT/vectors (a rerun loads them); the pretrained model in OUT/pretrained.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import bmojo
import tangent
from experiments import harness
from experiments.data import text
from experiments.language_model import PRESETS as LM_PRESETS
from experiments.language_model import experiment as lm_experiment
from experiments.language_model.config import Run
from experiments.language_model.models import model_config
from experiments.tangent_composition import measure
from experiments.tangent_lm import domains as domains_lib
from experiments.tangent_lm import models, report
from experiments.tangent_lm.config import Config

METHODS = ("tangent", "non-linear")
RESUMABLE = ("out", "progress", "cost_repeats")


def lm_config(config: Config):
    """The `experiments.language_model` config that pretrains the model: its lm_preset with our
    split (validation: `domains.PRETRAIN_VALID`; every domain play held out as its "test" split, so
    pretraining never reads them), one model, one seed, no extrapolation or samples."""
    base = LM_PRESETS[config.lm_preset]
    return dataclasses.replace(
        base, models=(config.model,), valid_plays=domains_lib.PRETRAIN_VALID,
        test_plays=domains_lib.adaptation_plays(config.domains, config.plays_per_domain),
        extrapolation=(1,), steps=config.pretrain_steps or base.steps, learning_rates=base.learning_rates[:1],
        seeds=(0,), samples=0, prompt_len=1, sample_len=1, position_buckets=1, out=config.out,
        progress=config.progress, checkpoint_every=0)


def check(config: Config, results: harness.Results | None = None) -> None:
    """ValueError, before anything is written: k beyond the model's blocks, a checkpoint that is not
    a saved model, or a results folder holding other settings."""
    if config.checkpoint is None:
        blocks = model_config(lm_config(config), config.model, 256).n_layers
    else:
        path = pathlib.Path(config.checkpoint) / "config.json"
        if not path.exists():
            raise ValueError(f"Config.checkpoint = {config.checkpoint!r}; expected a folder written by "
                             "bmojo.save (no config.json there)")
        blocks = bmojo.ModelConfig.from_dict(json.loads(path.read_text())).n_layers
    if config.k > blocks:
        raise ValueError(f"Config.k = {config.k}; expected at most the model's {blocks} blocks")
    for name in config.cost_models:
        if config.k > model_config(lm_config(config), name, 256).n_layers:
            raise ValueError(f"Config.k = {config.k}; cost model {name!r} has fewer blocks")
    results = results or harness.Results(config.out)
    record = results.read_config()
    if record is not None:
        before, now = record["config"], json.loads(json.dumps(dataclasses.asdict(config)))
        changed = [k for k in now if k not in RESUMABLE and before.get(k) != now[k]]
        if changed:
            raise ValueError(f"out {str(results.path)!r} holds results with other settings ("
                             + ", ".join(f"{k}={before.get(k)!r}" for k in changed)
                             + "); choose another --out or remove that folder")


# ------------------------------------------------------------------------------ state on disk


def save_vector(path: pathlib.Path, vector) -> None:
    """Write a (stacked) tangent vector {param path: array} as .npz, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **{k.replace("/", "|"): np.asarray(v) for k, v in vector.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    harness.atomic_write(path, buffer.getvalue())


def load_vector(path: pathlib.Path) -> tangent.TangentVector:
    with np.load(path) as f:
        return tangent.TangentVector({k.replace("|", "/"): jnp.asarray(f[k]) for k in f.files})


def pretrained(config: Config, results: harness.Results):
    """(model config, params): from --checkpoint, from OUT/pretrained, or pretrained now (the
    `experiments.language_model` training of `lm_config`) and saved to OUT/pretrained."""
    if config.checkpoint is not None:
        params, cfg = bmojo.restore(config.checkpoint)
        return cfg, params
    folder = results.path / "pretrained"
    if (folder / "config.json").exists():
        params, cfg = bmojo.restore(str(folder))
        return cfg, params
    lm = lm_config(config)
    data = lm_experiment.load_data(lm, results.path)
    cfg, params = lm_experiment.train(lm, Run(config.model, lm.learning_rates[0], 0), data, results)
    bmojo.save(str(folder), jax.device_get(params), cfg)
    return cfg, params


@dataclasses.dataclass(frozen=True)
class Windows:
    """Per domain: training inputs/targets (train_windows, T) and evaluation windows (n, T + 1)."""

    names: tuple[str, ...]
    train_inputs: np.ndarray  # (K, n, T)
    train_targets: np.ndarray  # (K, n, T)
    valid: dict[str, np.ndarray]
    test: dict[str, np.ndarray]


def make_windows(config: Config, seq_len: int) -> Windows:
    doms = domains_lib.load_domains(config.domains, config.plays_per_domain)
    rng = np.random.default_rng(0)
    train = np.stack([text.random_windows(d.streams["train"], rng, config.train_windows, seq_len) for d in doms])
    spaced = lambda d, s: text.spaced_windows(d.streams[s], config.eval_windows, seq_len)  # noqa: E731
    return Windows(tuple(d.name for d in doms), train[..., :-1], train[..., 1:],
                   {d.name: spaced(d, "valid") for d in doms}, {d.name: spaced(d, "test") for d in doms})


# ------------------------------------------------------------------------------ sections


class Experiment:
    """The shared state of the sections: config, results, models, windows and logged records."""

    def __init__(self, config: Config, results: harness.Results, model_cfg, params):
        self.config, self.results = config, results
        self.model_cfg = model_cfg
        self.tangent = models.taft_model(model_cfg, params, config.k)
        self.nonlinear = models.nonlinear(self.tangent)
        self.windows = make_windows(config, config_seq_len(config))
        self.records = results.read_metrics()

    def model(self, method: str):
        return self.tangent if method == "tangent" else self.nonlinear

    def find(self, **keys) -> list[dict]:
        return [r for r in self.records if all(r.get(k) == v for k, v in keys.items())]

    def log(self, record: dict) -> None:
        self.results.log(record)
        self.records.append(json.loads(json.dumps(record)))

    def bpb(self, method: str, d, windows: np.ndarray, ensemble: bool = False) -> float:
        return models.bits_per_byte(self.model(method), d, windows, self.config.eval_batch_size,
                                    ensemble=ensemble)

    def vectors(self, method: str, lr: float, seed: int):
        """The K stacked vectors of `method` at `lr` and `seed`: loaded, or trained now with
        `tangent.fit_components` (one component per domain, all at once; the non-linear model goes
        through the same loop, so both see the same batches)."""
        path = self.results.path / "vectors" / f"{method}-lr{lr:g}-seed{seed}.npz"
        if path.exists():
            return load_vector(path)
        c = self.config
        out = tangent.fit_components(
            self.model(method), self.windows.train_inputs, self.windows.train_targets,
            optimizer=tangent.recipe("adam_ce", learning_rate=lr).make_optimizer(c.steps), steps=c.steps,
            loss=models.lm_loss, batch_size=c.batch_size,
            keys=jax.random.split(jax.random.key(seed), len(self.windows.names)),
            log_every=max(1, c.steps // 10), progress=c.progress)
        save_vector(path, out.tangent)
        return out.tangent

    def chosen_lr(self, method: str) -> float:
        """The learning rate with the lowest validation bits per byte (mean over domains and seeds)."""
        c = self.config
        return min(c.learning_rates, key=lambda lr: np.mean(
            [r["bpb"] for r in self.find(section="adapt", method=method, lr=lr, split="valid")]))


def config_seq_len(config: Config) -> int:
    return LM_PRESETS[config.lm_preset].seq_len


def section_pretrained(ex: Experiment) -> None:
    """The pretrained model's bits per byte on each domain (validation and test) and the union (test)."""
    sets = [(n, s, getattr(ex.windows, s)[n]) for n in ex.windows.names for s in ("valid", "test")]
    for name, split, windows in sets + [("union", "test", union(ex))]:
        if not ex.find(section="pretrained", domain=name, split=split):
            ex.log({"section": "pretrained", "domain": name, "split": split,
                    "bpb": ex.bpb("non-linear", ex.nonlinear.zeros(), windows)})


def section_adapt(ex: Experiment) -> dict[str, float]:
    """Every method x learning rate x seed on validation; the chosen rate's on test. Returns the
    chosen rates."""
    c = ex.config
    for method in METHODS:
        for lr in c.learning_rates:
            for seed in c.seeds:
                done = ex.find(section="adapt", method=method, lr=lr, seed=seed, split="valid")
                if len(done) == len(ex.windows.names):
                    continue
                vectors = tangent.unstack(ex.vectors(method, lr, seed))
                for name, d in zip(ex.windows.names, vectors):
                    ex.log({"section": "adapt", "method": method, "lr": lr, "seed": seed, "domain": name,
                            "split": "valid", "bpb": ex.bpb(method, d, ex.windows.valid[name])})
    chosen = {m: ex.chosen_lr(m) for m in METHODS}
    for method, lr in chosen.items():
        for seed in c.seeds:
            if ex.find(section="adapt", method=method, lr=lr, seed=seed, split="test"):
                continue
            for name, d in zip(ex.windows.names, tangent.unstack(ex.vectors(method, lr, seed))):
                ex.log({"section": "adapt", "method": method, "lr": lr, "seed": seed, "domain": name,
                        "split": "test", "bpb": ex.bpb(method, d, ex.windows.test[name])})
    return chosen


def union(ex: Experiment) -> np.ndarray:
    return np.concatenate([ex.windows.test[n] for n in ex.windows.names])


def section_compose(ex: Experiment, chosen: dict[str, float]) -> None:
    """The composition (mean of the K tangent components), the non-linear ensemble (mean of the K
    fine-tuned models' next-byte distributions) and the weight soup, on each domain and the union."""
    evals = {**ex.windows.test, "union": union(ex)}
    for seed in ex.config.seeds:
        if ex.find(section="compose", seed=seed):
            continue
        tangents = ex.vectors("tangent", chosen["tangent"], seed)
        fine = ex.vectors("non-linear", chosen["non-linear"], seed)
        composed = tangent.compose(tangent.unstack(tangents))
        soup = tangent.compose(tangent.unstack(fine))
        for name, windows in evals.items():
            for method, value in (("composition", ex.bpb("tangent", composed, windows)),
                                  ("ensemble", ex.bpb("non-linear", fine, windows, ensemble=True)),
                                  ("soup", ex.bpb("non-linear", soup, windows))):
                ex.log({"section": "compose", "seed": seed, "eval": name, "method": method, "bpb": value})


def section_inference(ex: Experiment, chosen: dict[str, float]) -> None:
    """Compiled GFLOPs and time of one evaluation batch against the number of components n: the
    composition and the soup are one model whatever n (measured at n = K); the ensemble runs n
    fine-tuned parts on shared frozen features (measured at each n)."""
    if ex.find(section="inference"):
        return
    seed, num = ex.config.seeds[0], len(ex.windows.names)
    tangents = ex.vectors("tangent", chosen["tangent"], seed)
    fine = ex.vectors("non-linear", chosen["non-linear"], seed)
    inputs = jnp.asarray(union(ex)[: ex.config.eval_batch_size, :-1])
    repeats = ex.config.cost_repeats
    one = {"composition": measure.inference_cost(models.log_probs, ex.tangent,
                                                 tangent.compose(tangent.unstack(tangents)), inputs, repeats=repeats),
           "soup": measure.inference_cost(models.log_probs, ex.nonlinear, tangent.compose(tangent.unstack(fine)),
                                          inputs, repeats=repeats)}
    for n in range(1, num + 1):
        ensemble = measure.inference_cost(models.ensemble_log_probs, ex.nonlinear,
                                          jax.tree.map(lambda a: a[:n], fine), inputs, repeats=repeats)
        for method, cost in (*one.items(), ("ensemble", ensemble)):
            ex.log({"section": "inference", "n": n, "method": method, **cost})


_logits = jax.jit(lambda model, d, inputs: model(d, inputs))


def section_forget(ex: Experiment, chosen: dict[str, float]) -> None:
    """Remove `forget_domain`'s component from the composition of all: its outputs against a
    composition that never held it (max abs difference of the logits on the forgotten domain's test
    windows), and removing the only component against the pretrained network itself."""
    c = ex.config
    name = c.forget_domain
    windows = ex.windows.test[name]
    inputs = jnp.asarray(windows[:, :-1])
    for seed in c.seeds:
        if ex.find(section="forget", seed=seed):
            continue
        vectors = dict(zip(ex.windows.names, tangent.unstack(ex.vectors("tangent", chosen["tangent"], seed))))
        full, never, alone = (tangent.Composition(ex.tangent) for _ in range(3))
        for n, v in vectors.items():
            full.add(n, v)
            if n != name:
                never.add(n, v)
        before = ex.bpb("tangent", full.vector(), windows)
        full.remove(name)
        diff = float(jnp.max(jnp.abs(_logits(ex.tangent, full.vector(), inputs)
                                     - _logits(ex.tangent, never.vector(), inputs))))
        alone.add(name, vectors[name])
        alone.remove(name)
        original = jax.jit(bmojo.LanguageModel(ex.model_cfg).apply)(ex.tangent.params0, inputs)[0]
        empty = float(jnp.max(jnp.abs(_logits(ex.tangent, alone.vector(), inputs) - original)))
        ex.log({"section": "forget", "seed": seed, "domain": name, "max_abs_diff": diff,
                "empty_max_abs_diff": empty,
                "bpb": {"composition of all": before, "after forgetting": ex.bpb("tangent", full.vector(), windows),
                        "never held": ex.bpb("tangent", never.vector(), windows),
                        "own component": ex.bpb("tangent", vectors[name], windows)}})


def section_dp(ex: Experiment, chosen: dict[str, float]) -> None:
    """DP-SGD on `dp_domain`'s tangent component (a training window is the unit of privacy), at the
    tangent method's chosen rate; epsilon from the accountant of what ran."""
    c = ex.config
    k = ex.windows.names.index(c.dp_domain)
    lr = chosen["tangent"]
    for seed in c.seeds:
        if ex.find(section="dp", seed=seed):
            continue
        out = tangent.fit(ex.tangent, ex.windows.train_inputs[k], ex.windows.train_targets[k],
                          optimizer=tangent.recipe("adam_ce", learning_rate=lr).make_optimizer(c.steps),
                          steps=c.steps, loss=models.lm_loss, batch_size=c.batch_size, key=jax.random.key(seed),
                          dp=tangent.DPSGD(c.dp_clip, c.dp_noise), delta=c.dp_delta,
                          log_every=max(1, c.steps // 10), progress=c.progress)
        ex.log({"section": "dp", "seed": seed, "domain": c.dp_domain, "epsilon": out.epsilon, "delta": c.dp_delta,
                "lr": lr, "bpb": ex.bpb("tangent", out.tangent, ex.windows.test[c.dp_domain])})


def step_ms(model, d, features, targets, repeats: int) -> float:
    """Median wall time (ms) of one jitted gradient of the LM loss in ``d`` (cached features)."""
    grad = jax.jit(jax.value_and_grad(lambda d, h, y: models.lm_loss(model.apply_features(d, h), y)))
    compiled = grad.lower(d, features, targets).compile()
    measure.seconds(compiled, d, features, targets)
    return 1000 * statistics.median(measure.seconds(compiled, d, features, targets)[1] for _ in range(repeats))


def section_cost(ex: Experiment) -> None:
    """For each cost model (randomly initialised at the matched size): the time of a tangent training
    step over the time of a non-linear one, for TAFT-k and for all blocks, on this backend."""
    c = ex.config
    lm = lm_config(c)
    batch = ex.windows.train_inputs[0, : c.batch_size], ex.windows.train_targets[0, : c.batch_size]
    for name in c.cost_models:
        cfg = model_config(lm, name, 256)
        for k in sorted({c.k, cfg.n_layers}):
            if ex.find(section="cost", model=name, k=k):
                continue
            params = jax.jit(bmojo.LanguageModel(cfg).init)(jax.random.key(0), jnp.asarray(batch[0]))
            model = models.taft_model(cfg, params, k)
            features = model.features(jnp.asarray(batch[0]))
            d = jax.tree.map(lambda a: 1e-3 * jnp.ones_like(a), model.zeros())
            ms = {m: step_ms(mod, d, features, jnp.asarray(batch[1]), c.cost_repeats)
                  for m, mod in (("tangent", model), ("nonlinear", models.nonlinear(model)))}
            ex.log({"section": "cost", "model": name, "k": k, "blocks": cfg.n_layers, "tangent_ms": ms["tangent"],
                    "nonlinear_ms": ms["nonlinear"], "ratio": ms["tangent"] / ms["nonlinear"],
                    "backend": jax.default_backend(), "implementation": cfg.attention_implementation or "auto"})


def run(config: Config) -> pathlib.Path:
    """Every section (each skipped when its records exist), then results.md; returns the folder."""
    folder = pathlib.Path(config.out)
    results = harness.Results(folder)
    check(config, results)
    domains_lib.load_domains(config.domains, config.plays_per_domain)  # MissingDataError before writing
    results.write_config(config)
    model_cfg, params = pretrained(config, results)
    ex = Experiment(config, results, model_cfg, params)
    section_pretrained(ex)
    chosen = section_adapt(ex)
    section_compose(ex, chosen)
    section_inference(ex, chosen)
    section_forget(ex, chosen)
    section_dp(ex, chosen)
    section_cost(ex)
    report.write(ex, chosen)
    return folder
