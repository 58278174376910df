"""Configurations: presets, validation naming the offending field, predicted parameter counts."""

import json

import jax
import jax.numpy as jnp
import pytest

import bmojo


@pytest.mark.parametrize("overrides, field", [
    (dict(window=0), "window"),
    (dict(window=-3), "window"),
    (dict(memory_slots=-1), "memory_slots"),
    (dict(d_model=30, n_heads=4), "n_heads"),
    (dict(n_heads=4, n_kv_heads=3), "n_kv_heads"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(ssm_kind="mamba3"), "ssm_kind"),
    (dict(n_layers=3, block_types=("swa", "mamba")), "block_types"),
    (dict(block_types=("swa", "lstm")), "block_types"),
    (dict(memory_evict="random"), "memory_evict"),
    (dict(memory_select="best"), "memory_select"),
    (dict(innovation="oracle"), "innovation"),
    (dict(position_encoding="alibi"), "position_encoding"),
    (dict(ssm_residual=1), "ssm_residual"),
    (dict(window=True), "window"),
    (dict(innovation_order=0), "innovation_order"),
    (dict(memory_threshold=float("nan")), "memory_threshold"),
    (dict(norm_eps=-1.0), "norm_eps"),
    (dict(rope_base=0.0), "rope_base"),
    (dict(attention_implementation="foo"), "attention_implementation"),
    (dict(scan_implementation="associative", ssm_kind="mamba2"), "scan_implementation"),
    (dict(ssm_kind="mamba2", ssm_head_dim=48), "ssm_head_dim"),
])
def test_bad_config_raises_naming_the_field(overrides, field):
    base = dict(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2)
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}\b"):
        bmojo.ModelConfig(**{**base, **overrides})


def test_unknown_preset_and_unknown_override():
    with pytest.raises(ValueError, match="preset name 'gpt'"):
        bmojo.preset("gpt")
    with pytest.raises(ValueError, match="wndow"):
        bmojo.preset("swa", wndow=3)
    with pytest.raises(ValueError, match="window"):
        bmojo.preset("bmojo", window=0)


def test_presets_build_their_block_patterns():
    assert bmojo.preset("transformer", n_layers=2).block_types == ("attention", "attention")
    assert bmojo.preset("jamba", n_layers=6, every=3).block_types == (
        "mamba", "mamba", "attention", "mamba", "mamba", "attention")
    assert bmojo.preset("bmojo_f_attn", n_layers=4).block_types == ("bmojo_f", "attention") * 2
    assert bmojo.preset("bmojo", n_layers=2, interleave="mamba").block_types == ("bmojo", "mamba")
    with pytest.raises(ValueError, match="interleave"):
        bmojo.preset("bmojo", interleave="lstm")
    # the paper's B'MOJO: no positional encoding, fixed predictor, keep-the-most-surprising store
    paper = bmojo.preset("bmojo")
    assert (paper.position_encoding, paper.innovation, paper.memory_select, paper.memory_evict,
            paper.ssm_residual) == ("none", "fixed", "all", "lowest", False)
    assert bmojo.preset("bmojo_attn").position_encoding == "rope"
    assert bmojo.preset("mamba2").ssm_kind == "mamba2" and bmojo.preset("mamba").d_ff == 0
    config = bmojo.preset("bmojo", window=8)
    assert config.chunk_size == 8 and config.layer_spec("bmojo").horizon == 16 and config.layer_spec("bmojo").memory
    assert not config.layer_spec("bmojo_f").memory and config.layer_spec("swa").horizon == 8
    restored = bmojo.ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and hash(restored) == hash(config)


@pytest.mark.parametrize("fields", [
    dict(block_types=("bmojo", "mamba", "attention"), ssm_kind="mamba2", tie_embeddings=True),
    dict(block_types=("bmojo_f", "swa", "bmojo"), dt_rank=3, d_ff=0),
    dict(block_types=("bmojo", "bmojo", "bmojo"), memory_slots=0),  # no store: no predictor
    dict(block_types=("bmojo", "swa", "bmojo"), innovation="learned"),  # a learned predictor each
])
def test_parameter_count_of_mixed_configs(fields):
    config = bmojo.ModelConfig(vocab_size=40, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, window=4,
                               ssm_state=8, ssm_head_dim=16, **fields)
    shapes = jax.eval_shape(bmojo.LanguageModel(config).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == config.num_params()
