"""Model configuration, presets and the parameter count a configuration predicts.

Block types (one per layer, ``ModelConfig.block_types``):

- ``"attention"``: full causal attention (window ``max_len``; a ring buffer of ``max_len`` when decoding)
- ``"swa"``: sliding-window attention, window ``window``
- ``"mamba"``: a Mamba mixer (``ssm_kind`` "mamba1" or "mamba2") alone
- ``"bmojo_f"``: B'MOJO with fading memory only (SSM + in-context window + fading window)
- ``"bmojo"``: B'MOJO with fading and eidetic memory (store of ``memory_slots`` selected tokens)
"""

from __future__ import annotations

import dataclasses
import math

BLOCK_TYPES = ("attention", "swa", "mamba", "bmojo_f", "bmojo")
ATTENTION_TYPES = ("attention", "swa", "bmojo_f", "bmojo")
SSM_TYPES = ("mamba", "bmojo_f", "bmojo")
SSM_KINDS = ("mamba1", "mamba2")
MEMORY_SELECT = ("topk", "threshold")
MEMORY_EVICT = ("oldest", "lowest")
DTYPES = ("float32", "bfloat16", "float16")


def _need(ok: bool, field: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"ModelConfig.{field} = {value!r}; expected {expected}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a ``LanguageModel``; ``chunk_size=None`` means ``window``.

    ``d_ff = 0`` removes the MLP of every block (pure Mamba stacks). Mamba-1 mixers use
    ``dt_rank = ceil(d_model / 16)`` unless given. Mamba-2 mixers use heads of width
    ``ssm_head_dim`` over the expanded width ``ssm_expand * d_model`` and one B/C group.
    Eidetic store: after each chunk, among the ``chunk_size`` tokens that have just left both
    windows, up to ``memory_topk`` with the largest innovation (``memory_select="topk"``; with
    ``"threshold"`` only those above ``memory_threshold``) enter a store of ``memory_slots``
    slots, evicting the oldest or the lowest-scored entries (``memory_evict``).
    """

    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    window: int = 64
    chunk_size: int | None = None
    ssm_state: int = 16
    ssm_kind: str = "mamba1"
    memory_slots: int = 32
    block_types: tuple[str, ...] = ()
    dtype: str = "float32"
    d_ff: int = 512
    max_len: int = 2048
    ssm_expand: int = 2
    conv_width: int = 4
    dt_rank: int | None = None
    ssm_head_dim: int = 32
    ssd_block_len: int = 64
    memory_topk: int = 4
    memory_select: str = "topk"
    memory_threshold: float = 1.0
    memory_evict: str = "oldest"
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    scan_implementation: str | None = None
    attention_implementation: str | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ssm_state",
                     "max_len", "ssm_expand", "conv_width", "ssm_head_dim", "ssd_block_len",
                     "memory_topk"):
            value = getattr(self, name)
            _need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                  name, value, "a positive integer")
        _need(isinstance(self.window, int) and self.window >= 1, "window", self.window,
              "a positive integer (window >= 1)")
        if self.chunk_size is None:
            set_("chunk_size", self.window)
        _need(isinstance(self.chunk_size, int) and self.chunk_size >= 1, "chunk_size",
              self.chunk_size, "a positive integer or None (= window)")
        _need(isinstance(self.memory_slots, int) and self.memory_slots >= 0, "memory_slots",
              self.memory_slots, "an integer >= 0 (eidetic capacity M)")
        _need(isinstance(self.d_ff, int) and self.d_ff >= 0, "d_ff", self.d_ff, "an integer >= 0")
        _need(self.d_model % self.n_heads == 0, "n_heads", self.n_heads,
              f"a divisor of d_model = {self.d_model}")
        _need(self.head_dim % 2 == 0, "n_heads", self.n_heads,
              f"d_model / n_heads even for RoPE (d_model = {self.d_model})")
        _need(self.n_heads % self.n_kv_heads == 0, "n_kv_heads", self.n_kv_heads,
              f"a divisor of n_heads = {self.n_heads}")
        _need(self.ssm_kind in SSM_KINDS, "ssm_kind", self.ssm_kind, f"one of {SSM_KINDS}")
        if self.ssm_kind == "mamba2":
            _need(self.d_inner % self.ssm_head_dim == 0, "ssm_head_dim", self.ssm_head_dim,
                  f"a divisor of ssm_expand * d_model = {self.d_inner}")
        if self.dt_rank is None:
            set_("dt_rank", math.ceil(self.d_model / 16))
        _need(isinstance(self.dt_rank, int) and self.dt_rank >= 1, "dt_rank", self.dt_rank,
              "a positive integer or None")
        _need(self.memory_select in MEMORY_SELECT, "memory_select", self.memory_select,
              f"one of {MEMORY_SELECT}")
        _need(self.memory_evict in MEMORY_EVICT, "memory_evict", self.memory_evict,
              f"one of {MEMORY_EVICT}")
        _need(self.dtype in DTYPES, "dtype", self.dtype, f"one of {DTYPES}")
        types = tuple(self.block_types) or ("bmojo",) * self.n_layers
        set_("block_types", types)
        _need(len(types) == self.n_layers, "block_types", types,
              f"{self.n_layers} entries (n_layers)")
        for kind in types:
            _need(kind in BLOCK_TYPES, "block_types", types, f"entries from {BLOCK_TYPES}")

    # Derived sizes -----------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def d_inner(self) -> int:
        return self.ssm_expand * self.d_model

    @property
    def ssm_heads(self) -> int:
        return self.d_inner // self.ssm_head_dim

    def layer_window(self, kind: str) -> int:
        """The in-context window of a block type (``max_len`` for full attention)."""
        return self.max_len if kind == "attention" else self.window

    def uses_fading(self, kind: str) -> bool:
        return kind in ("bmojo_f", "bmojo")

    def uses_memory(self, kind: str) -> bool:
        return kind == "bmojo" and self.memory_slots > 0

    def horizon(self, kind: str) -> int:
        """Age at which a token leaves every window of the layer: W, or 2W with the fading window."""
        w = self.layer_window(kind)
        return 2 * w if self.uses_fading(kind) else w

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        values = dict(values)
        values["block_types"] = tuple(values.get("block_types", ()))
        return cls(**values)

    # Parameter count, derived from the shapes of each part (independent of the modules) -------
    def num_params(self) -> int:
        d, v = self.d_model, self.vocab_size
        total = v * d + d + (0 if self.tie_embeddings else d * v)
        for kind in self.block_types:
            total += d  # pre-norm of the mixer
            if self.d_ff:
                total += d + 3 * d * self.d_ff  # pre-norm + SwiGLU (gate, up, down)
            if kind in ATTENTION_TYPES:
                hd = self.head_dim
                total += 2 * d * self.n_heads * hd + 2 * d * self.n_kv_heads * hd
            if kind in SSM_TYPES:
                total += self._ssm_params()
            if self.uses_memory(kind):
                total += d * d + d  # innovation predictor
        return total

    def _ssm_params(self) -> int:
        d, e, n, k = self.d_model, self.d_inner, self.ssm_state, self.conv_width
        if self.ssm_kind == "mamba1":
            r = self.dt_rank
            return d * 2 * e + (k + 1) * e + e * (r + 2 * n) + r * e + e + e * n + e + e * d
        h, conv = self.ssm_heads, e + 2 * n
        return d * (2 * e + 2 * n + h) + (k + 1) * conv + 3 * h + e + e * d


_PRESETS = {
    "transformer": dict(pattern="attention"),
    "swa": dict(pattern="swa"),
    "mamba": dict(pattern="mamba", ssm_kind="mamba1", d_ff=0),
    "mamba2": dict(pattern="mamba", ssm_kind="mamba2", d_ff=0),
    "jamba": dict(pattern="jamba"),
    "bmojo_f": dict(pattern="bmojo_f"),
    "bmojo": dict(pattern="bmojo"),
}
PRESETS = tuple(_PRESETS)


def preset(name: str, *, attention_every: int = 2, **overrides) -> ModelConfig:
    """The configuration of a named model; ``overrides`` replace any ``ModelConfig`` field.

    ``jamba`` stacks Mamba blocks with a full-attention block as every ``attention_every``-th
    layer. Unless ``block_types`` is overridden it is rebuilt for the final ``n_layers``.
    """
    if name not in _PRESETS:
        raise ValueError(f"preset name {name!r} is unknown; expected one of {PRESETS}")
    fields = dict(_PRESETS[name])
    pattern = fields.pop("pattern")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"preset overrides {sorted(unknown)} are not ModelConfig fields")
    fields.update(overrides)
    if "block_types" not in overrides:
        n = fields.get("n_layers", ModelConfig.n_layers)
        if pattern == "jamba":
            if not isinstance(attention_every, int) or attention_every < 1:
                raise ValueError(f"attention_every = {attention_every!r}; expected a positive integer")
            fields["block_types"] = tuple(
                "attention" if (i + 1) % attention_every == 0 else "mamba" for i in range(n))
        else:
            fields["block_types"] = (pattern,) * n
    return ModelConfig(**fields)
