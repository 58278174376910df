"""The MQAR study's configuration (`Config`), its presets and the check that runs before anything is
written."""

from __future__ import annotations

import dataclasses

import bmojo
from bmojo.config import SSM_KINDS
from experiments import harness
from experiments.data import mqar

ABLATIONS = ("store", "predictor", "fillers", "positions", "pattern", "variant", "storage")
"""Ablation groups of B'MOJO (see `plan.ablation_arms`)."""
SWEEP_KNOBS = {"bmojo": "memory_slots", "bmojo_f": "ssm_state", "swa": "window", "mamba": "ssm_state",
               "mamba2": "ssm_state", "jamba": "ssm_state", "transformer": None}
"""The `ModelConfig` field each family varies in the memory sweep (the Transformer's memory is its
KV cache of the whole sequence: one point)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """MQAR by Zoology's protocol: every model, a learning-rate sweep, seeds, a memory sweep, ablations."""

    models: tuple[str, ...] = ("transformer", "swa", "mamba2", "jamba", "bmojo_f", "bmojo")
    """Presets compared at the same width and depth (names of `bmojo.preset`); each gets a
    learning-rate sweep on the validation split."""
    sweep: tuple[str, ...] = ("bmojo", "swa", "mamba2")
    """Families of the accuracy-against-memory sweep; each varies its knob (bmojo: memory_slots;
    swa: window; mamba, mamba2, jamba, bmojo_f: ssm_state). Empty: no sweep."""
    memory_slots_sweep: tuple[int, ...] = (0, 2, 16)
    """Eidetic capacities M of bmojo in the sweep (0: no store, i.e. bmojo_f)."""
    window_sweep: tuple[int, ...] = (8, 16)
    """Windows of swa in the sweep."""
    ssm_state_sweep: tuple[int, ...] = (4, 64)
    """SSM state sizes N in the sweep."""
    ablations: tuple[str, ...] = ("store", "predictor", "fillers", "positions", "variant")
    """B'MOJO ablation groups, one table each: store (the paper's rule vs top-k/oldest vs threshold),
    predictor (fixed vs learned), fillers (zero vs random), positions (none vs RoPE), pattern
    (B'MOJO(-F) interleaved with full attention), variant (ours: the SSM output added to the layer's
    output), storage (B'MOJO with in-storage memory, `bmojo.storage`). Empty: none."""

    vocab_size: int = 64
    """Vocabulary: keys from 1 .. V/2 - 1, values from V/2 .. V - 1, filler 0."""
    seq_len: int = 32
    """Tokens per sequence."""
    train_pairs: tuple[int, ...] = (2, 4, 8)
    """Key-value pairs per training sequence; the training and validation sets mix them equally."""
    eval_pairs: tuple[int, ...] = (2, 4, 8)
    """Key-value pairs of the test sets (one accuracy each); the largest is the sweep's."""
    power_a: float = 0.01
    """Power law of the gap between the pairs and a query (Zoology's 0.01: most queries soon after)."""
    fillers: str = "zero"
    """Tokens between the queries: "zero" (Zoology's paper configurations) or "random" noise."""
    train_examples: int = 3200
    """Size of the fixed training set (epochs pass over it)."""
    valid_examples: int = 256
    """Size of the validation set (learning rate and early stopping); never the test sets."""
    test_examples: int = 256
    """Test sequences per number of pairs."""
    eval_length: int = 0
    """Also test every model on sequences of this length (0: no), where keys lie up to that far back:
    length generalisation (models are built for it; they train at `seq_len`)."""

    d_model: int = 32
    """Width of every model."""
    n_layers: int = 2
    """Depth of every model (jamba, *_attn: a partner layer every second layer)."""
    n_heads: int = 2
    """Attention heads (one key-value head)."""
    d_ff: int = 64
    """MLP width after each mixer (the mamba and mamba2 presets have none)."""
    window: int = 2
    """Sliding window W of swa and of B'MOJO (also its chunk size)."""
    ssm_state: int = 16
    """SSM state size N (mamba, mamba2, jamba, bmojo_f, bmojo)."""
    hybrid_ssm: str = "mamba2"
    """SSM of jamba and the B'MOJO models: "mamba1" (the presets' own) or "mamba2" (faster on CPU)."""
    memory_slots: int = 8
    """Eidetic capacity M of bmojo."""
    memory_topk: int = 2
    """Candidates per chunk that may enter the store in the top-k and threshold ablations."""
    memory_threshold: float = 0.5
    """Innovation threshold of the threshold ablation (the fixed predictor's squared error)."""
    storage_blocks: int = 16
    """In-storage memory of the storage ablation: blocks kept (`bmojo.ModelConfig.storage_blocks`)."""
    storage_block_size: int = 4
    """Tokens per stored block."""
    storage_topk: int = 2
    """Blocks retrieved per chunk."""
    ssm_residual: bool = False
    """Ours: every B'MOJO(-F) model of the study also adds its SSM output to the layer output (see
    `bmojo.ModelConfig.ssm_residual`), to measure the whole study on that variant. Off: the paper's."""

    learning_rates: tuple[float, ...] = (3e-3, 1e-2)
    """Learning rates swept with the first seed; the best on the validation set is kept per model."""
    seeds: int = 3
    """Seeds per model at its chosen learning rate (mean and standard deviation)."""
    extra_seeds: int = 2
    """Seeds of every sweep point and ablation (they use their family's chosen learning rate)."""
    max_epochs: int = 5
    """Epochs over the training set at most (cosine decay to 0 over them)."""
    batch_size: int = 32
    """Sequences per step (and per evaluation batch); divisible by the number of devices."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    early_stop: float = 0.99
    """Stop a run at the end of the first epoch whose validation accuracy reaches this."""
    seed: int = 0
    """Seed of the data sets and of the first model seed (model seeds are seed, seed + 1, ...)."""
    out: str = "runs/associative_recall"
    """Results folder; a rerun with the same folder skips finished runs and resumes the others."""
    checkpoint_every: int = 0
    """Steps between checkpoints within a run (0: none; finished runs are kept in metrics.jsonl)."""
    log_every: int = 64
    """Steps between training-loss records."""
    progress: bool = True
    """Show progress bars."""
    tensorboard: bool = False
    """Also write the metrics as TensorBoard event files in OUT/tensorboard (loss, accuracy,
    examples/s; needs the `experiments` extra): `tensorboard --logdir OUT/tensorboard`."""


RESUMABLE = ("out", "checkpoint_every", "log_every", "progress", "tensorboard")
"""Config fields that may change when rerunning into the same results folder; any other change is
refused, so that one folder never mixes settings."""

PRESETS = {
    "default": Config(),
    "tiny": Config(models=("transformer", "swa", "mamba2", "bmojo_f", "bmojo"), sweep=("bmojo", "swa"),
                   memory_slots_sweep=(2,), window_sweep=(4,), ssm_state_sweep=(8,),
                   ablations=("store", "fillers"), vocab_size=16, seq_len=16, train_pairs=(2, 3),
                   eval_pairs=(2, 3), train_examples=64, valid_examples=32, test_examples=16, d_model=16,
                   d_ff=32, window=2, ssm_state=4, memory_slots=4, learning_rates=(3e-3, 1e-2), seeds=2,
                   extra_seeds=1, max_epochs=2, batch_size=16, log_every=2),
    "variant": Config(models=("transformer", "swa", "mamba2", "jamba", "bmojo_f", "bmojo"), sweep=("bmojo",),
                      memory_slots_sweep=(0, 4, 16, 32), ablations=(), seq_len=64, train_pairs=(4, 8, 16),
                      eval_pairs=(4, 8, 16), window=4, ssm_state=4, ssm_residual=True, learning_rates=(1e-2,),
                      seeds=2, max_epochs=10, out="runs/associative_recall_variant"),
    "zoology": Config(models=("transformer", "swa", "mamba", "mamba2", "jamba", "bmojo_f", "bmojo",
                              "bmojo_f_attn", "bmojo_attn"),
                      sweep=("bmojo", "swa", "mamba", "mamba2", "bmojo_f"),
                      memory_slots_sweep=(0, 16, 32, 64, 128), window_sweep=(32, 64, 128),
                      ssm_state_sweep=(8, 32, 64), ablations=ABLATIONS, vocab_size=8192, seq_len=256,
                      train_pairs=(4, 8, 16),
                      eval_pairs=(4, 8, 16), train_examples=100_000, valid_examples=3000, test_examples=3000,
                      d_model=128, n_heads=2, d_ff=256, window=32, ssm_state=16, hybrid_ssm="mamba1",
                      memory_slots=64, memory_topk=16, learning_rates=(1e-4, 4.6e-4, 2.2e-3, 1e-2), seeds=3,
                      extra_seeds=3, max_epochs=64, batch_size=256, checkpoint_every=2000, log_every=100,
                      out="runs/associative_recall_zoology"),
    "paper": Config(models=("transformer", "swa", "mamba", "jamba", "bmojo_f", "bmojo"),
                    sweep=("bmojo", "swa", "mamba", "bmojo_f"), memory_slots_sweep=(0, 16, 32, 64, 128),
                    ablations=ABLATIONS,
                    window_sweep=(32, 64, 128), ssm_state_sweep=(8, 32, 64), vocab_size=8192, seq_len=256,
                    train_pairs=(16, 32, 64), eval_pairs=(16, 32, 64), train_examples=100_000,
                    valid_examples=3000, test_examples=3000, d_model=128, d_ff=256, window=32,
                    hybrid_ssm="mamba1", memory_slots=64, memory_topk=16,
                    learning_rates=(1e-4, 4.6e-4, 2.2e-3, 1e-2), seeds=3, extra_seeds=3, max_epochs=64,
                    batch_size=256, checkpoint_every=2000, log_every=100,
                    out="runs/associative_recall_paper"),
}
"""Named settings. `default`: the embedded CPU setting (minutes on 2 cores). `tiny`: the tests'.
`variant`: our SSM-residual B'MOJO where its fading memory is too small for the task (state 4, up to
16 pairs in 64 tokens), so that recall must come from the eidetic store; one learning rate (the
default's choice for every model), two seeds, about an hour on 2 CPU cores.
`zoology`: Zoology's MQAR sizes (vocabulary 8192, 100k training sequences, learning rates
logspace(-4, -2, 4), 64 epochs, early stop at 0.99; one length, 256, for all pair counts: ours).
`paper`: B'MOJO's MQAR figure (2 layers, length 256, window 32, accuracy against total memory); its
pair counts are ours (Zoology's at length 256). Both are GPU/TPU-sized."""


def check(config: Config) -> None:
    """ValueError naming the first bad field; runs before anything is written."""
    harness.check_fields(
        config,
        positive=("vocab_size", "seq_len", "train_pairs", "eval_pairs", "power_a", "train_examples",
                  "valid_examples", "test_examples", "d_model", "n_layers", "n_heads", "window",
                  "ssm_state", "memory_topk", "learning_rates", "seeds", "max_epochs", "batch_size",
                  "log_every", "window_sweep", "ssm_state_sweep", "storage_blocks", "storage_block_size",
                  "storage_topk"),
        nonnegative=("d_ff", "memory_slots", "memory_slots_sweep", "extra_seeds", "weight_decay",
                     "checkpoint_every", "eval_length"),
        finite=("memory_threshold",),
        probability=("early_stop",),
        choices={"models": bmojo.PRESETS, "sweep": tuple(SWEEP_KNOBS), "ablations": ABLATIONS,
                 "hybrid_ssm": SSM_KINDS, "fillers": mqar.FILLERS})
    for name in ("models", "train_pairs", "eval_pairs"):
        if not getattr(config, name):
            raise ValueError(f"Config.{name} is empty; expected at least one entry")
    if config.train_examples < config.batch_size:
        raise ValueError(f"Config.train_examples = {config.train_examples}; expected at least batch_size "
                         f"= {config.batch_size} (one step per epoch)")
    for pairs in config.train_pairs + config.eval_pairs:
        mqar.check_task(config.vocab_size, config.seq_len, pairs, config.power_a, config.fillers)
    if config.eval_length and config.eval_length <= config.seq_len:
        raise ValueError(f"Config.eval_length = {config.eval_length}; expected 0 or more than seq_len = "
                         f"{config.seq_len}")
