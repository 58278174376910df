"""Multi-query associative recall (MQAR): which memory lets a language model recall?

Every preset of `bmojo` (transformer, swa, mamba, mamba2, jamba, bmojo_f, bmojo) is trained at the same
width and depth on MQAR (`experiments.data.mqar`: key-value pairs, then each key asked again later) and
evaluated per number of pairs. The loss is the cross-entropy at the query positions only,

    loss = sum_t mask_t CE(logits_t, target_t) / sum_t mask_t  +  aux

where `aux` is the auxiliary innovation loss of the B'MOJO layers (0 for the other presets). Accuracy is
the fraction of query positions whose argmax is the right value. The in-context window is shorter than
the distance from most keys to their queries, so a sliding window alone cannot recall them.

A second sweep varies each model's memory knob (B'MOJO's eidetic capacity `memory_slots`, the SSM state
size `ssm_state` of bmojo_f and mamba, the window of swa) and plots accuracy against the size of the
recurrent state (floats in the decoding cache of one sequence).

    python -m experiments.associative_recall                   # CPU default, minutes
    python -m experiments.associative_recall --preset=zoology  # the benchmark's sizes, GPU/TPU
    python -m experiments.associative_recall --help

Results folder (`results_dir`): config.json, metrics.jsonl, results.md, accuracy_vs_pairs.png,
accuracy_vs_memory.png, checkpoints/RUN. A rerun with the same folder resumes unfinished runs from their
checkpoints and skips finished ones; a rerun with settings that change results is refused.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bmojo
from bmojo.config import SSM_KINDS
from experiments import harness
from experiments.data import mqar

HYBRIDS = ("jamba", "bmojo_f", "bmojo")
"""Presets that combine an SSM with attention (their SSM kind is `Config.hybrid_ssm`)."""
MEMORY_KNOBS = {"bmojo": "memory_slots", "bmojo_f": "ssm_state", "swa": "window", "mamba": "ssm_state",
                "mamba2": "ssm_state", "jamba": "ssm_state"}
"""The `ModelConfig` field that sets each preset's memory budget in the sweep."""

RESUMABLE = ("models", "sweep", "memory_slots_sweep", "ssm_state_sweep", "window_sweep", "eval_pairs",
             "results_dir", "checkpoint_every", "log_every", "progress")
"""Config fields that may change when rerunning into the same results folder (the others change results)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """MQAR training and evaluation of every preset, and the memory-budget sweep."""

    models: tuple[str, ...] = bmojo.PRESETS
    """Presets to train and evaluate (names of `bmojo.preset`), all at the same width and depth."""
    vocab_size: int = 32
    """Vocabulary: keys from 1 .. V/2 - 1, values from V/2 .. V - 1."""
    seq_len: int = 32
    """Tokens per sequence."""
    train_pairs: tuple[int, ...] = (2, 4, 8)
    """Numbers of key-value pairs; every training batch mixes them in equal parts."""
    eval_pairs: tuple[int, ...] = (2, 4, 8)
    """Numbers of key-value pairs evaluated (one accuracy each); the largest is used in the sweep."""
    power_a: float = 0.01
    """Power law of the gap between the pairs and a query (small: queries soon after the pairs)."""
    d_model: int = 64
    """Width of every model."""
    n_layers: int = 2
    """Depth of every model (jamba: a Mamba layer then an attention layer)."""
    n_heads: int = 4
    """Attention heads (2 key-value heads)."""
    d_ff: int = 128
    """Hidden width of the MLP after each mixer (the mamba and mamba2 presets have none)."""
    window: int = 4
    """Sliding window W of swa and of B'MOJO's in-context window (also its chunk size)."""
    ssm_state: int = 16
    """SSM state size N per channel (mamba, mamba2, jamba, bmojo_f, bmojo)."""
    hybrid_ssm: str = "mamba2"
    """SSM of the hybrids jamba, bmojo_f and bmojo: "mamba1" (the presets' own) or "mamba2" (several
    times faster on CPU). The mamba and mamba2 presets keep theirs."""
    memory_slots: int = 8
    """Eidetic capacity M of bmojo: past tokens kept in the store."""
    memory_topk: int = 2
    """Tokens with the largest innovation that enter bmojo's store per chunk of W candidates."""
    sweep: tuple[str, ...] = ("bmojo", "bmojo_f", "swa", "mamba")
    """Presets in the memory-budget sweep; each varies its knob (bmojo: memory_slots; bmojo_f, mamba,
    mamba2, jamba: ssm_state; swa: window). Empty: no sweep."""
    memory_slots_sweep: tuple[int, ...] = (2, 8, 32)
    """Values of memory_slots in the sweep (a value equal to the main setting reuses the main run)."""
    ssm_state_sweep: tuple[int, ...] = (4, 16)
    """Values of ssm_state in the sweep."""
    window_sweep: tuple[int, ...] = (4, 8, 16)
    """Values of window (swa) in the sweep."""
    steps: int = 600
    """Optimizer steps per model."""
    batch_size: int = 32
    """Sequences per step (and per evaluation batch); divisible by the number of devices."""
    learning_rate: float = 3e-3
    """Peak learning rate (AdamW, linear warm-up over 10% of the steps, cosine decay)."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    eval_examples: int = 256
    """Test sequences per number of pairs."""
    seed: int = 0
    """Seed of the data and of the initial parameters."""
    results_dir: str = "runs/associative_recall"
    """Results folder; a rerun with the same folder resumes and skips finished runs."""
    checkpoint_every: int = 200
    """Steps between checkpoints (and one at the end of every run)."""
    log_every: int = 25
    """Steps between metrics records."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self):
        for name in ("models", "train_pairs", "eval_pairs"):
            if not getattr(self, name):
                raise ValueError(f"Config.{name} is empty; expected at least one entry")
        for field, names, allowed in (("models", self.models, bmojo.PRESETS),
                                      ("sweep", self.sweep, tuple(MEMORY_KNOBS)),
                                      ("hybrid_ssm", (self.hybrid_ssm,), SSM_KINDS)):
            for name in names:
                if name not in allowed:
                    raise ValueError(f"Config.{field} has {name!r}; expected names from {allowed}")
        for pairs in self.train_pairs + self.eval_pairs:
            mqar.check_task(self.vocab_size, self.seq_len, pairs, self.power_a)
        for name in ("batch_size", "eval_examples", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"Config.{name} = {getattr(self, name)}; expected a positive integer")


PRESETS = {
    "default": Config(),
    "tiny": Config(vocab_size=16, seq_len=16, train_pairs=(2, 4), eval_pairs=(2, 4), d_model=16,
                   n_heads=2, d_ff=32, window=2, ssm_state=4, memory_slots=4, memory_topk=2,
                   memory_slots_sweep=(4,), ssm_state_sweep=(4,), window_sweep=(2,), steps=2,
                   batch_size=4, eval_examples=8, checkpoint_every=0, log_every=1),
    "zoology": Config(vocab_size=8192, seq_len=512, train_pairs=(8, 16, 32, 64),
                      eval_pairs=(8, 16, 32, 64), d_model=128, d_ff=256, window=64, ssm_state=16,
                      hybrid_ssm="mamba1", memory_slots=64, memory_topk=16,
                      memory_slots_sweep=(16, 32, 64, 128), ssm_state_sweep=(8, 16, 32, 64),
                      window_sweep=(32, 64, 128, 256), steps=20_000, batch_size=64, learning_rate=1e-3,
                      eval_examples=1000, results_dir="runs/associative_recall_zoology",
                      checkpoint_every=1000, log_every=100),
}
"""Named settings: `default` (the embedded CPU setting), `tiny` (tests), `zoology` (the benchmark's sizes:
vocabulary 8192, length 512, up to 64 pairs, 2 layers; vary the width from 64 to 256 with --d_model)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One model to train: `name` (results and checkpoints), its preset and its `ModelConfig` overrides."""

    name: str
    preset: str
    overrides: tuple[tuple[str, int], ...] = ()


def model_config(config: Config, preset: str, **overrides) -> bmojo.ModelConfig:
    """The `ModelConfig` of `preset` at the experiment's width and depth, with `overrides` on top."""
    d_ff = config.d_ff if bmojo.preset(preset).d_ff else 0  # Mamba stacks keep their MLP-free design
    fields = dict(vocab_size=config.vocab_size, d_model=config.d_model, n_layers=config.n_layers,
                  n_heads=config.n_heads, n_kv_heads=2, d_ff=d_ff, window=config.window,
                  ssm_state=config.ssm_state, memory_slots=config.memory_slots,
                  memory_topk=config.memory_topk, max_len=config.seq_len)
    if preset in HYBRIDS:
        fields["ssm_kind"] = config.hybrid_ssm
    return bmojo.preset(preset, **(fields | overrides))


def sweep_points(config: Config) -> list[tuple[Run, str, int]]:
    """(run, knob, value) for each point of the memory sweep; the main setting of a trained model is its
    main run."""
    points = []
    for name in config.sweep:
        knob = MEMORY_KNOBS[name]
        for value in sorted(set(getattr(config, f"{knob}_sweep"))):
            if value == getattr(config, knob) and name in config.models:
                points.append((Run(name, name), knob, value))
            else:
                points.append((Run(f"{name}-{knob}={value}", name, ((knob, value),)), knob, value))
    return points


def plan(config: Config) -> list[Run]:
    """Every run to train: one per model, then the other points of the memory sweep."""
    runs = [Run(name, name) for name in config.models]
    return runs + [run for run, _, _ in sweep_points(config) if run not in runs]


def state_size(model: bmojo.ModelConfig) -> int:
    """Floats in the decoding cache of one sequence (`bmojo.init_cache`): the model's recurrent memory."""
    cache = jax.eval_shape(lambda: bmojo.init_cache(model, 1))
    return sum(x.size for x in jax.tree.leaves(cache) if jnp.issubdtype(x.dtype, jnp.floating))


def masked_accuracy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """logits (batch, length, vocab), targets and mask (batch, length) -> sums over the masked positions:
    correct = sum_t mask_t [argmax logits_t == target_t], count = sum_t mask_t."""
    hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {"correct": jnp.sum(hit * mask), "count": jnp.sum(mask)}


def make_loss_fn(model: bmojo.LanguageModel):
    """(params, batch, rng) -> (masked cross-entropy + auxiliary innovation loss, metrics)."""

    def loss_fn(params, batch, rng):
        del rng  # no dropout
        logits, aux = model.apply(params, batch["inputs"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        mask = batch["mask"]
        recall = jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        stats = masked_accuracy(logits, batch["targets"], mask)
        return recall + aux, {"recall_loss": recall, "aux": aux,
                              "accuracy": stats["correct"] / jnp.maximum(stats["count"], 1.0)}

    return loss_fn


def optimizer(config: Config) -> optax.GradientTransformation:
    """Gradients clipped to global norm 1, then AdamW with a linear warm-up over the first 10% of the
    steps and cosine decay to 0."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, max(1, config.steps // 10), max(1, config.steps))
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, weight_decay=config.weight_decay))


def train_batch(config: Config, step: int) -> dict[str, np.ndarray]:
    """The training batch of `step` (a pure function of seed and step, so resuming resumes the data)."""
    return mqar.mixture(np.random.default_rng([config.seed, 0, step]), config.batch_size,
                        vocab_size=config.vocab_size, seq_len=config.seq_len,
                        num_pairs=config.train_pairs, power_a=config.power_a)


def eval_batches(config: Config, pairs: int) -> list[dict[str, np.ndarray]]:
    """`eval_examples` test sequences with `pairs` pairs (rounded up to whole batches), disjoint seeds
    from training."""
    rng = np.random.default_rng([config.seed, 1, pairs])
    n = -(-config.eval_examples // config.batch_size)
    return [mqar.generate(rng, config.batch_size, vocab_size=config.vocab_size, seq_len=config.seq_len,
                          num_pairs=pairs, power_a=config.power_a) for _ in range(n)]


def train_and_evaluate(config: Config, run: Run, results: harness.Results) -> dict[int, float]:
    """Train `run` (resuming from its checkpoint), log and return {pairs: accuracy} over `eval_pairs`."""
    model = bmojo.LanguageModel(model_config(config, run.preset, **dict(run.overrides)))
    params = model.init(jax.random.key(config.seed), jnp.zeros((1, config.seq_len), jnp.int32))
    opt = optimizer(config)
    state = harness.fit(
        harness.TrainState.create(params, opt, config.seed),
        harness.make_train_step(make_loss_fn(model), opt),
        lambda step: train_batch(config, step),
        steps=config.steps, checkpoint_dir=str(results.path / "checkpoints" / run.name),
        checkpoint_every=config.checkpoint_every, results=results, run=run.name,
        log_every=config.log_every, progress=config.progress)

    def metric_fn(params, batch):
        logits, _ = model.apply(params, batch["inputs"])
        return masked_accuracy(logits, batch["targets"], batch["mask"])

    accuracy = {}
    for pairs in config.eval_pairs:
        sums = harness.evaluate(metric_fn, state.params, eval_batches(config, pairs))
        accuracy[pairs] = sums["correct"] / sums["count"]
        results.log({"run": run.name, "step": config.steps, "eval_pairs": pairs, "accuracy": accuracy[pairs]})
    return accuracy


def check_resumable(config: Config, results: harness.Results) -> None:
    """ValueError if `results` holds runs made with other settings than `config` (only the fields in
    `RESUMABLE` may change between runs into the same folder)."""
    path = results.path / "config.json"
    if not path.exists():
        return
    before = json.loads(path.read_text())["config"]
    now = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = [k for k in now if k not in RESUMABLE and before.get(k) != now[k]]
    if changed:
        raise ValueError(
            f"results_dir {str(results.path)!r} holds runs with other settings ("
            + ", ".join(f"{k}={before.get(k)!r}" for k in changed)
            + "); choose another --results_dir or remove that folder")


def finished(results: harness.Results) -> dict[str, dict[int, float]]:
    """{run: {pairs: accuracy}} of the evaluations logged in `results`."""
    done: dict[str, dict[int, float]] = {}
    for record in results.read_metrics():
        if "eval_pairs" in record:
            done.setdefault(record["run"], {})[record["eval_pairs"]] = record["accuracy"]
    return done


def report(config: Config, accuracy: dict[str, dict[int, float]], results: harness.Results) -> str:
    """Write results.md and the two plots from {run: {pairs: accuracy}}; returns the Markdown."""
    pairs = sorted(config.eval_pairs)
    rows = [[name, model_config(config, name).num_params(), *(accuracy[name][p] for p in pairs),
             float(np.mean([accuracy[name][p] for p in pairs]))] for name in config.models]
    sections = [
        "# Multi-query associative recall",
        f"Vocabulary {config.vocab_size}, length {config.seq_len}, width {config.d_model}, "
        f"{config.n_layers} layers, window {config.window}, SSM state {config.ssm_state} "
        f"({config.hybrid_ssm} in the hybrids), eidetic capacity {config.memory_slots} (top "
        f"{config.memory_topk} per chunk of {config.window}); {config.steps} steps of {config.batch_size} "
        f"sequences mixing {', '.join(map(str, config.train_pairs))} pairs. Accuracy at the query "
        f"positions of {config.eval_examples} test sequences per number of pairs.",
        harness.markdown_table(["model", "params", *(f"{p} pairs" for p in pairs), "mean"], rows),
    ]
    results.plot("accuracy_vs_pairs", [{
        "series": {name: (pairs, [accuracy[name][p] for p in pairs]) for name in config.models},
        "title": "MQAR", "xlabel": "key-value pairs", "ylabel": "accuracy", "logx": True, "ylim": (0, 1.02)}])

    hardest = max(pairs)
    series, sweep_rows = {}, []
    for run, knob, value in sweep_points(config):
        size = state_size(model_config(config, run.preset, **{knob: value}))
        xs, ys = series.setdefault(f"{run.preset} ({knob})", ([], []))
        xs.append(size)
        ys.append(accuracy[run.name][hardest])
        sweep_rows.append([run.preset, knob, value, size, accuracy[run.name][hardest]])
    if config.sweep:
        sections += [f"## Memory budget ({hardest} pairs)",
                     "State: floats in the recurrent (decoding) state of one sequence, all layers.",
                     harness.markdown_table(["model", "knob", "value", "state", "accuracy"], sweep_rows)]
        results.plot("accuracy_vs_memory", [{
            "series": series, "title": f"MQAR, {hardest} pairs", "xlabel": "recurrent state (floats)",
            "ylabel": "accuracy", "logx": True, "ylim": (0, 1.02)}])
    markdown = "\n\n".join(sections)
    results.write_markdown([markdown])
    return markdown


def run(config: Config) -> dict[str, dict[int, float]]:
    """Train and evaluate every run of `plan(config)` not finished yet, then write the report.
    Returns {run: {pairs: accuracy}}."""
    runs = plan(config)
    for r in runs:  # every model config is valid before anything trains (the errors name the field)
        model_config(config, r.preset, **dict(r.overrides))
    results = harness.Results(config.results_dir)
    check_resumable(config, results)
    results.write_config(config)
    accuracy = finished(results)
    for r in runs:
        if set(config.eval_pairs) <= set(accuracy.get(r.name, ())):
            print(f"{r.name}: finished earlier, skipped")
            continue
        accuracy[r.name] = train_and_evaluate(config, r, results)
    report(config, accuracy, results)
    return accuracy


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Command line: build the config from `argv`, run, print results.md and return its path."""
    config = harness.parse_args(Config, PRESETS, argv, prog="python -m experiments.associative_recall",
                                description=__doc__.split("\n\n")[0])
    run(config)
    out = pathlib.Path(config.results_dir) / "results.md"
    print(out.read_text())
    return out


if __name__ == "__main__":
    main()
