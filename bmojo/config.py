"""Model configuration, presets and the parameter count a configuration predicts.

Block types (``BlockType``, one per layer in ``ModelConfig.block_types``):

- ``"attention"``: full causal attention (window ``max_len``; a ring buffer of ``max_len`` when decoding)
- ``"swa"``: sliding-window attention, window ``window``
- ``"mamba"``: a Mamba mixer (``ssm_kind`` "mamba1" or "mamba2") alone
- ``"bmojo_f"``: B'MOJO with fading memory only (SSM + in-context window + fading window)
- ``"bmojo"``: B'MOJO with fading and eidetic memory (store of ``memory_slots`` selected tokens)

Presets: ``transformer``, ``swa``, ``mamba``, ``mamba2``, ``jamba`` (Mamba with full attention every
``every``-th layer), ``bmojo_f`` and ``bmojo`` (every layer B'MOJO(-F), as in the paper), and
``bmojo_f_attn`` / ``bmojo_attn`` (B'MOJO(-F) layers interleaved with full-attention layers, the
pattern of the released models of AWS's public B'MOJO-F code). ``preset(..., interleave="mamba")``
interleaves B'MOJO(-F) with Mamba layers instead.

``ModelConfig.layer_spec(kind)`` (a ``LayerSpec``) is the one place that turns a block type and the
configuration into what the layer holds (SSM, windows, fading window, store, storage, horizon).
"""

from __future__ import annotations

import dataclasses
import enum
import math

from ssm_kernels import implementations
from ssm_kernels.ops.bmojo_attention.masks import memory_horizon

from .memory import Eviction, Predictor, Selection
from .rope import PositionEncoding

SSM_KINDS = ("mamba1", "mamba2")
DTYPES = ("float32", "bfloat16", "float16")


class BlockType(str, enum.Enum):
    """The type of one layer (see the module docstring); a plain string is accepted wherever a
    block type is passed."""

    ATTENTION = "attention"
    SWA = "swa"
    MAMBA = "mamba"
    BMOJO_F = "bmojo_f"
    BMOJO = "bmojo"

    def __str__(self) -> str:  # prints as the string it replaces
        return self.value


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What one layer holds, decided once from the configuration (``ModelConfig.layer_spec``).

    ``ssm``: the mixer's ``ssm_kind`` (None: no SSM); ``window``: the in-context window W (``max_len``
    for full attention; None: no attention); ``fading``: keys/values of the SSM output over the fading
    window f[i-2W+1 .. i-W]; ``memory``: an eidetic store of ``memory_slots`` tokens;
    ``learned_predictor``: the store's innovation comes from our learned predictor (it has
    parameters); ``storage``: in-storage memory; ``horizon``: the age at which a token leaves every
    window, W or 2W with the fading window (None: no attention).
    """

    kind: BlockType
    ssm: str | None
    window: int | None
    fading: bool
    memory: bool
    learned_predictor: bool
    storage: bool
    horizon: int | None

    @property
    def has_ssm(self) -> bool:
        return self.ssm is not None

    @property
    def has_attention(self) -> bool:
        return self.window is not None


def _need(ok: bool, field: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"ModelConfig.{field} = {value!r}; expected {expected}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _block_type(kind, name: str) -> BlockType:
    """``kind`` (a ``BlockType`` or its string) as a ``BlockType``; the error names ``name``."""
    try:
        return BlockType(kind)
    except ValueError:
        raise ValueError(f"{name} = {kind!r}; expected a block type, one of "
                         f"{tuple(t.value for t in BlockType)}") from None


def _choice(config, field: str, kind: type):
    """Replace a str field by its enum member; the error names the field and the allowed values."""
    value = getattr(config, field)
    try:
        object.__setattr__(config, field, kind(value))
    except ValueError:
        _need(False, field, value, f"one of {tuple(m.value for m in kind)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a ``LanguageModel``; ``chunk_size=None`` means ``window``.

    ``d_ff = 0`` removes the MLP of every block (pure Mamba stacks). Mamba-1 mixers use
    ``dt_rank = ceil(d_model / 16)`` unless given. Mamba-2 mixers use heads of width
    ``ssm_head_dim`` over the expanded width ``ssm_expand * d_model`` and one B/C group, and run
    ``ssm_kernels.ssd`` in chunks of ``ssd_chunk_size`` tokens in the parallel forward pass.
    ``block_types``: one ``BlockType`` (or its string) per layer; empty means all ``"bmojo"``.
    ``position_encoding``: RoPE on the queries and keys of every attention, or none.

    Eidetic store (see ``bmojo.memory`` for the equations): the innovation of each token comes
    from ``innovation`` (``"fixed"``: the paper's parameter-free running average of the last
    ``innovation_order`` SSM outputs; ``"learned"``: our linear predictor with an auxiliary loss).
    After each chunk, the ``chunk_size`` tokens that have just left both windows are candidates for
    a store of ``memory_slots`` slots: ``memory_select`` (``"all"``: the paper's, every candidate
    competes; ``"topk"``: at most ``memory_topk`` per chunk; ``"threshold"``: at most
    ``memory_topk`` of those above ``memory_threshold``) and ``memory_evict`` (``"lowest"``: the
    paper's, the lowest innovation leaves; ``"oldest"``: the oldest leaves).

    In-storage memory (``bmojo.storage``; off when ``storage_blocks`` is 0): B'MOJO(-F) layers keep
    the last ``storage_blocks`` complete blocks of ``storage_block_size`` tokens outside their fixed
    state and attend, in every chunk, to the tokens of the ``storage_topk`` blocks most relevant to the
    chunk's first query.

    ``ssm_residual`` (ours; off in the paper and in AWS's public B'MOJO-F code): the layer also
    adds the SSM output at each position to its output, ``out = o(attention) + f``, so that a query
    reads the fading memory at its own position, as a Mamba layer does, and not only through the
    fading window W tokens back.
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
    block_types: tuple[BlockType | str, ...] = ()
    dtype: str = "float32"
    d_ff: int = 512
    max_len: int = 2048
    ssm_expand: int = 2
    conv_width: int = 4
    dt_rank: int | None = None
    ssm_head_dim: int = 32
    ssd_chunk_size: int = 64
    position_encoding: str = "rope"
    innovation: str = "fixed"
    innovation_order: int = 4
    memory_select: str = "all"
    memory_topk: int = 4
    memory_threshold: float = 1.0
    memory_evict: str = "lowest"
    storage_blocks: int = 0
    storage_block_size: int = 16
    storage_topk: int = 2
    ssm_residual: bool = False
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    scan_implementation: str | None = None
    attention_implementation: str | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "window",
                     "ssm_state", "max_len", "ssm_expand", "conv_width", "ssm_head_dim",
                     "ssd_chunk_size", "memory_topk", "innovation_order", "storage_block_size",
                     "storage_topk"):
            value = getattr(self, name)
            _need(_is_int(value) and value >= 1, name, value, "a positive integer")
        if self.chunk_size is None:
            set_("chunk_size", self.window)
        _need(_is_int(self.chunk_size) and self.chunk_size >= 1, "chunk_size", self.chunk_size,
              "a positive integer or None (= window)")
        _need(_is_int(self.memory_slots) and self.memory_slots >= 0, "memory_slots",
              self.memory_slots, "an integer >= 0 (eidetic capacity M)")
        _need(_is_int(self.d_ff) and self.d_ff >= 0, "d_ff", self.d_ff, "an integer >= 0")
        _need(_is_int(self.storage_blocks) and (self.storage_blocks == 0 or self.storage_blocks >= self.storage_topk),
              "storage_blocks", self.storage_blocks,
              f"0 (no in-storage memory) or an integer >= storage_topk = {self.storage_topk}")
        _need(self.d_model % self.n_heads == 0, "n_heads", self.n_heads,
              f"a divisor of d_model = {self.d_model}")
        _need(self.n_heads % self.n_kv_heads == 0, "n_kv_heads", self.n_kv_heads,
              f"a divisor of n_heads = {self.n_heads}")
        _need(self.ssm_kind in SSM_KINDS, "ssm_kind", self.ssm_kind, f"one of {SSM_KINDS}")
        if self.ssm_kind == "mamba2":
            _need(self.d_inner % self.ssm_head_dim == 0, "ssm_head_dim", self.ssm_head_dim,
                  f"a divisor of ssm_expand * d_model = {self.d_inner}")
        if self.dt_rank is None:
            set_("dt_rank", math.ceil(self.d_model / 16))
        _need(_is_int(self.dt_rank) and self.dt_rank >= 1, "dt_rank", self.dt_rank,
              "a positive integer or None")
        for field, kind in (("position_encoding", PositionEncoding), ("innovation", Predictor),
                            ("memory_select", Selection), ("memory_evict", Eviction)):
            _choice(self, field, kind)
        if self.position_encoding == PositionEncoding.ROPE:
            _need(self.head_dim % 2 == 0, "n_heads", self.n_heads,
                  f"d_model / n_heads even for RoPE (d_model = {self.d_model})")
        _need(_is_finite(self.memory_threshold), "memory_threshold", self.memory_threshold,
              "a finite number")
        _need(_is_finite(self.rope_base) and self.rope_base > 1, "rope_base", self.rope_base,
              "a finite number > 1")
        _need(_is_finite(self.norm_eps) and self.norm_eps > 0, "norm_eps", self.norm_eps,
              "a finite number > 0")
        for flag in ("tie_embeddings", "ssm_residual"):
            _need(isinstance(getattr(self, flag), bool), flag, getattr(self, flag), "True or False")
        _need(self.dtype in DTYPES, "dtype", self.dtype, f"one of {DTYPES}")
        scans = implementations("selective_scan" if self.ssm_kind == "mamba1" else "ssd")
        _need(self.scan_implementation is None or self.scan_implementation in scans,
              "scan_implementation", self.scan_implementation,
              f"None (auto) or one of {scans} for ssm_kind={self.ssm_kind!r}")
        attentions = implementations("bmojo_attention")
        _need(self.attention_implementation is None or self.attention_implementation in attentions,
              "attention_implementation", self.attention_implementation,
              f"None (auto) or one of {attentions}")
        types = tuple(self.block_types) or (BlockType.BMOJO,) * self.n_layers
        _need(len(types) == self.n_layers, "block_types", types,
              f"{self.n_layers} entries (n_layers)")
        set_("block_types", tuple(_block_type(kind, f"ModelConfig.block_types[{i}]")
                                  for i, kind in enumerate(types)))

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

    def layer_spec(self, kind: BlockType | str) -> LayerSpec:
        """The one place that decides what a layer of block type ``kind`` holds."""
        kind = _block_type(kind, "kind")
        attention = kind != BlockType.MAMBA
        window = (self.max_len if kind == BlockType.ATTENTION else self.window) if attention else None
        fading = kind in (BlockType.BMOJO_F, BlockType.BMOJO)
        memory = kind == BlockType.BMOJO and self.memory_slots > 0
        return LayerSpec(
            kind=kind, ssm=self.ssm_kind if kind in (BlockType.MAMBA, BlockType.BMOJO_F, BlockType.BMOJO) else None,
            window=window, fading=fading, memory=memory,
            learned_predictor=memory and self.innovation == Predictor.LEARNED,
            storage=fading and self.storage_blocks > 0,
            horizon=memory_horizon(window, fading) if attention else None)

    def layer_specs(self) -> tuple[LayerSpec, ...]:
        """``layer_spec`` of every layer, in order."""
        return tuple(self.layer_spec(kind) for kind in self.block_types)

    def to_dict(self) -> dict:
        """Plain JSON-ready values (enum members as their strings)."""
        plain = lambda v: v.value if isinstance(v, enum.Enum) else v  # noqa: E731
        return {k: tuple(map(plain, v)) if isinstance(v, tuple) else plain(v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Inverse of ``to_dict``; also reads configurations saved before ``ssd_block_len`` was
        renamed ``ssd_chunk_size``."""
        values = dict(values)
        if "ssd_block_len" in values:
            if "ssd_chunk_size" in values:
                raise ValueError("the configuration has both ssd_block_len (the old name) and "
                                 "ssd_chunk_size; expected one of them")
            values["ssd_chunk_size"] = values.pop("ssd_block_len")
        values["block_types"] = tuple(values.get("block_types", ()))
        return cls(**values)

    # Parameter count, derived from the shapes of each part (independent of the modules) -------
    def num_params(self) -> int:
        d, v = self.d_model, self.vocab_size
        total = v * d + d + (0 if self.tie_embeddings else d * v)
        for spec in self.layer_specs():
            total += d  # pre-norm of the mixer
            if self.d_ff:
                total += d + 3 * d * self.d_ff  # pre-norm + SwiGLU (gate, up, down)
            if spec.has_attention:
                hd = self.head_dim
                total += 2 * d * self.n_heads * hd + 2 * d * self.n_kv_heads * hd
            if spec.has_ssm:
                total += self._ssm_params()
            if spec.learned_predictor:
                total += d * d + d  # learned innovation predictor
        return total

    def _ssm_params(self) -> int:
        d, e, n, k = self.d_model, self.d_inner, self.ssm_state, self.conv_width
        if self.ssm_kind == "mamba1":
            r = self.dt_rank
            return d * 2 * e + (k + 1) * e + e * (r + 2 * n) + r * e + e + e * n + e + e * d
        h, conv = self.ssm_heads, e + 2 * n
        return d * (2 * e + 2 * n + h) + (k + 1) * conv + 3 * h + e + e * d


_PAPER_BMOJO = dict(position_encoding="none")
"""The B'MOJO paper's layers use no positional encoding (AWS's public B'MOJO-F code uses RoPE)."""

_PRESETS = {
    "transformer": dict(pattern=BlockType.ATTENTION),
    "swa": dict(pattern=BlockType.SWA),
    "mamba": dict(pattern=BlockType.MAMBA, ssm_kind="mamba1", d_ff=0),
    "mamba2": dict(pattern=BlockType.MAMBA, ssm_kind="mamba2", d_ff=0),
    "jamba": dict(pattern=BlockType.MAMBA, interleave=BlockType.ATTENTION),
    "bmojo_f": dict(pattern=BlockType.BMOJO_F, **_PAPER_BMOJO),
    "bmojo": dict(pattern=BlockType.BMOJO, **_PAPER_BMOJO),
    "bmojo_f_attn": dict(pattern=BlockType.BMOJO_F, interleave=BlockType.ATTENTION),
    "bmojo_attn": dict(pattern=BlockType.BMOJO, interleave=BlockType.ATTENTION),
}
PRESETS = tuple(_PRESETS)
INTERLEAVE = (BlockType.ATTENTION, BlockType.SWA, BlockType.MAMBA)


def preset(name: str, *, every: int = 2, interleave: BlockType | str | None = None,
           **overrides) -> ModelConfig:
    """The configuration of a named model; ``overrides`` replace any ``ModelConfig`` field.

    Interleaved patterns put a block of type ``interleave`` as every ``every``-th layer (layers
    ``every - 1, 2 every - 1, ...``) and the preset's own block type elsewhere: ``jamba`` is Mamba
    with full attention, ``bmojo_f_attn`` / ``bmojo_attn`` are B'MOJO(-F) with full attention (and
    keep RoPE, as the public B'MOJO-F code does). ``interleave`` overrides the preset's partner
    (e.g. ``preset("bmojo", interleave="mamba")``). Unless ``block_types`` is overridden it is
    rebuilt for the final ``n_layers``.
    """
    if name not in _PRESETS:
        raise ValueError(f"preset name {name!r} is unknown; expected one of {PRESETS}")
    fields = dict(_PRESETS[name])
    pattern = fields.pop("pattern")
    partner = fields.pop("interleave", None) if interleave is None else interleave
    fields.pop("interleave", None)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown:
        raise ValueError(f"preset overrides {sorted(unknown)} are not ModelConfig fields")
    if partner is not None and partner not in INTERLEAVE:
        raise ValueError(f"interleave = {partner!r}; expected None or one of "
                         f"{tuple(t.value for t in INTERLEAVE)}")
    if not _is_int(every) or every < 1:
        raise ValueError(f"every = {every!r}; expected a positive integer")
    fields.update(overrides)
    if "block_types" not in overrides:
        n = fields.get("n_layers", ModelConfig.n_layers)
        fields["block_types"] = tuple(
            partner if partner is not None and (i + 1) % every == 0 else pattern for i in range(n))
    return ModelConfig(**fields)
