"""BERT-style encoder (Flax Linen) whose parameter tree mirrors the Hugging Face layout.

Parameter paths map one to one onto Hugging Face ``BertModel`` tensor names
(see ``experiments.backbones.loaders``): ``embeddings/word_embeddings/embedding`` is
``embeddings.word_embeddings.weight``, ``encoder/layer_3/attention/self/query/kernel`` is
``encoder.layer.3.attention.self.query.weight`` transposed, LayerNorm ``scale`` is ``weight``.

Shapes: ``input_ids``, ``attention_mask``, ``token_type_ids`` are int32 (batch, length);
hidden states are (batch, length, hidden_size).
Layer (post-LN):  h = LN(x + W_o Attn(x));  y = LN(h + W_2 gelu(W_1 h)),
Attn = softmax(Q K^T / sqrt(head_dim) + mask_bias) V per head, with exact (erf) GELU.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pooler: bool = True
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a multiple of num_heads={self.num_heads}")

    @classmethod
    def from_hf(cls, config: dict, **overrides) -> "BertConfig":
        """Build from a Hugging Face ``config.json`` dict (``model_type`` bert, absolute positions)."""
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"hidden_act={config['hidden_act']!r}: only 'gelu' is supported")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("position_embedding_type must be 'absolute'")
        fields = dict(
            vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
            num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
            intermediate_size=config["intermediate_size"],
            max_position=config["max_position_embeddings"],
            type_vocab_size=config.get("type_vocab_size", 2),
            layer_norm_eps=config.get("layer_norm_eps", 1e-12))
        fields.update(overrides)
        return cls(**fields)


PRESETS = {
    # MiniLM-L6-H384 (all-MiniLM-L6-v2), the embedded default backbone.
    "minilm_l6": BertConfig(),
    "bert_base": BertConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    # For tests and smoke runs.
    "tiny": BertConfig(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4,
                       intermediate_size=64, max_position=32),
}


def preset(name: str, **overrides) -> BertConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown BERT preset {name!r}; choices: {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def _layer_norm(config: BertConfig) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.dtype, name="LayerNorm")


class BertEmbeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids):
        c = self.config
        length = input_ids.shape[1]
        if length > c.max_position:
            raise ValueError(f"input_ids has shape {input_ids.shape}: length must be <= "
                             f"max_position={c.max_position}")
        embed = lambda n, name: nn.Embed(n, c.hidden_size, dtype=c.dtype, name=name)
        x = (embed(c.vocab_size, "word_embeddings")(input_ids)
             + embed(c.max_position, "position_embeddings")(jnp.arange(length)[None])
             + embed(c.type_vocab_size, "token_type_embeddings")(token_type_ids))
        return _layer_norm(c)(x)


class BertSelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        c = self.config
        head_dim = c.hidden_size // c.num_heads
        split = lambda t: t.reshape(t.shape[:2] + (c.num_heads, head_dim))
        q, k, v = (split(nn.Dense(c.hidden_size, dtype=c.dtype, name=n)(x))
                   for n in ("query", "key", "value"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
        probs = jax.nn.softmax(scores.astype(jnp.float32) + mask_bias, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        return out.reshape(x.shape[:2] + (c.hidden_size,))


class BertResidualOutput(nn.Module):
    """``LayerNorm(residual + Dense(x))``: HF's ``attention.output`` and ``output``."""
    config: BertConfig

    @nn.compact
    def __call__(self, x, residual):
        c = self.config
        return _layer_norm(c)(residual + nn.Dense(c.hidden_size, dtype=c.dtype, name="dense")(x))


class BertAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        a = BertSelfAttention(self.config, name="self")(x, mask_bias)
        return BertResidualOutput(self.config, name="output")(a, x)


class BertIntermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        return nn.gelu(nn.Dense(c.intermediate_size, dtype=c.dtype, name="dense")(x),
                       approximate=False)


class BertLayer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask_bias):
        h = BertAttention(self.config, name="attention")(x, mask_bias)
        return BertResidualOutput(self.config, name="output")(
            BertIntermediate(self.config, name="intermediate")(h), h)


def mask_bias(attention_mask: jax.Array) -> jax.Array:
    """(batch, length) 0/1 mask -> additive bias (batch, 1, 1, length) float32."""
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, -1e9).astype(jnp.float32)


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean over unmasked tokens: (batch, length, dim), (batch, length) -> (batch, dim)."""
    m = attention_mask[..., None].astype(hidden.dtype)
    return (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


class BertModel(nn.Module):
    """Embeddings, ``num_layers`` post-LN blocks and the optional tanh pooler (HF ``BertModel``).

    ``__call__`` returns the last hidden states (batch, length, hidden_size). ``embed`` and
    ``encode(hidden, attention_mask, start)`` split the forward pass so that the activations
    before block ``start`` can be computed once and cached (tangent fine-tuning of the last
    blocks).
    """
    config: BertConfig

    def setup(self):
        c = self.config
        self.embeddings = BertEmbeddings(c)
        self.encoder = Encoder(c)
        if c.pooler:
            self.pooler = Pooler(c)

    def embed(self, input_ids, token_type_ids=None):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        return self.embeddings(input_ids, token_type_ids)

    def encode(self, hidden, attention_mask, start: int = 0, stop: int | None = None):
        return self.encoder(hidden, attention_mask, start, stop)

    def pool(self, hidden):
        """HF pooler: tanh(Dense(hidden[:, 0])) -> (batch, hidden_size)."""
        return self.pooler(hidden)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids has shape {input_ids.shape}; expected (batch, length)")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {attention_mask.shape}; expected "
                             f"{input_ids.shape} (the shape of input_ids)")
        hidden = self.encode(self.embed(input_ids, token_type_ids), attention_mask)
        if self.config.pooler and self.is_initializing():
            self.pool(hidden)  # create the pooler's parameters
        return hidden


class Encoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden, attention_mask, start=0, stop=None):
        bias = mask_bias(attention_mask)
        layers = [BertLayer(self.config, name=f"layer_{i}") for i in range(self.config.num_layers)]
        for layer in layers[start:stop]:
            hidden = layer(hidden, bias)
        return hidden


class Pooler(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, hidden):
        c = self.config
        return jnp.tanh(nn.Dense(c.hidden_size, dtype=c.dtype, name="dense")(hidden[:, 0]))


class BertClassifier(nn.Module):
    """``BertModel`` (under ``bert``), mean pooling over tokens, and a linear ``head``.

    ``__call__(input_ids, attention_mask) -> logits (batch, num_classes)``;
    ``from_block(hidden, attention_mask, start)`` runs blocks ``start..`` on cached
    hidden states (the output of block ``start - 1``, or of the embeddings if start=0).
    """
    config: BertConfig
    num_classes: int

    def setup(self):
        self.bert = BertModel(self.config)
        self.head = nn.Dense(self.num_classes)

    def features(self, input_ids, attention_mask, start: int = 0):
        """Hidden states entering block ``start``: (batch, length, hidden_size)."""
        hidden = self.bert.embed(input_ids)
        return self.bert.encode(hidden, attention_mask, 0, start)

    def from_block(self, hidden, attention_mask, start: int = 0):
        hidden = self.bert.encode(hidden, attention_mask, start)
        return self.head(mean_pool(hidden, attention_mask))

    def __call__(self, input_ids, attention_mask):
        hidden = self.bert(input_ids, attention_mask)
        return self.head(mean_pool(hidden, attention_mask))
