"""Configurations: presets, validation naming the offending field, predicted parameter counts."""

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
    assert bmojo.preset("jamba", n_layers=6, attention_every=3).block_types == (
        "mamba", "mamba", "attention", "mamba", "mamba", "attention")
    assert bmojo.preset("mamba2").ssm_kind == "mamba2" and bmojo.preset("mamba").d_ff == 0
    config = bmojo.preset("bmojo", window=8)
    assert config.chunk_size == 8 and config.horizon("bmojo") == 16 and config.uses_memory("bmojo")
    assert not config.uses_memory("bmojo_f") and config.horizon("swa") == 8
    assert bmojo.ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("fields", [
    dict(block_types=("bmojo", "mamba", "attention"), ssm_kind="mamba2", tie_embeddings=True),
    dict(block_types=("bmojo_f", "swa", "bmojo"), dt_rank=3, d_ff=0),
    dict(block_types=("bmojo", "bmojo", "bmojo"), memory_slots=0),  # no store: no predictor
])
def test_parameter_count_of_mixed_configs(fields):
    config = bmojo.ModelConfig(vocab_size=40, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, window=4,
                               ssm_state=8, ssm_head_dim=16, **fields)
    shapes = jax.eval_shape(bmojo.LanguageModel(config).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == config.num_params()
