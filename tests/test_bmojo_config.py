"""Configurations: presets, validation naming the offending field, predicted parameter counts, block
types and the spec of each layer, parameter paths, configurations saved under an old field name."""

import dataclasses
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


def test_block_types_are_an_enum_given_as_strings_and_saved_as_strings():
    config = bmojo.ModelConfig(d_model=32, n_layers=2, block_types=("swa", bmojo.BlockType.MAMBA))
    assert config.block_types == (bmojo.BlockType.SWA, bmojo.BlockType.MAMBA)
    assert all(type(kind) is bmojo.BlockType for kind in config.block_types)
    assert f"{config.block_types[0]}" == "swa"  # prints as the string it replaces
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["block_types"] == ["swa", "mamba"]
    assert bmojo.ModelConfig.from_dict(saved) == config
    with pytest.raises(ValueError, match=r"kind = 'lstm'; expected a block type, one of "
                                         r"\('attention', 'swa', 'mamba', 'bmojo_f', 'bmojo'\)"):
        config.layer_spec("lstm")


def test_layer_specs_follow_the_rules_of_each_block_type():
    config = bmojo.ModelConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=5, window=8, max_len=64,
                               memory_slots=3, storage_blocks=2, innovation="learned",
                               block_types=("attention", "swa", "mamba", "bmojo_f", "bmojo"))
    # kind: ssm, window (max_len for full attention), fading, store, learned predictor, storage, horizon
    expected = {"attention": (None, 64, False, False, False, False, 64),
                "swa": (None, 8, False, False, False, False, 8),
                "mamba": ("mamba1", None, False, False, False, False, None),
                "bmojo_f": ("mamba1", 8, True, False, False, True, 16),
                "bmojo": ("mamba1", 8, True, True, True, True, 16)}
    specs = config.layer_specs()
    assert [spec.kind for spec in specs] == list(config.block_types)
    for spec in specs:
        got = (spec.ssm, spec.window, spec.fading, spec.memory, spec.learned_predictor, spec.storage, spec.horizon)
        assert got == expected[spec.kind], spec.kind
    plain = dataclasses.replace(config, memory_slots=0, storage_blocks=0, innovation="fixed", ssm_kind="mamba2",
                                ssm_head_dim=16)
    assert plain.layer_spec("bmojo") == bmojo.LayerSpec(
        kind=bmojo.BlockType.BMOJO, ssm="mamba2", window=8, fading=True, memory=False, learned_predictor=False,
        storage=False, horizon=16)


def test_a_config_saved_before_the_ssd_chunk_size_rename_loads():
    config = bmojo.preset("mamba2", ssd_chunk_size=16)
    saved = json.loads(json.dumps(config.to_dict()))
    saved["ssd_block_len"] = saved.pop("ssd_chunk_size")
    assert bmojo.ModelConfig.from_dict(saved) == config
    with pytest.raises(ValueError, match="both ssd_block_len .* and ssd_chunk_size"):
        bmojo.ModelConfig.from_dict({**saved, "ssd_chunk_size": 16})


def test_parameter_paths_are_those_that_saved_checkpoints_hold():
    """Checkpoints name arrays by path: a B'MOJO layer (Mamba-1 SSM, learned predictor) and a full
    attention layer, each with its MLP."""
    config = bmojo.preset("bmojo_attn", vocab_size=8, d_model=16, n_heads=2, n_kv_heads=1, n_layers=2, d_ff=8,
                          innovation="learned")
    shapes = jax.eval_shape(bmojo.LanguageModel(config).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    paths = {"/".join(key.key for key in path) for path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    ssm = {f"ssm/{name}" for name in ("A_log", "D", "conv_bias", "conv_kernel", "dt_bias", "dt_proj/kernel",
                                      "in_proj/kernel", "out_proj/kernel", "x_proj/kernel")}
    attn = {f"attn/{p}_proj/kernel" for p in "qkvo"}
    block = {"mixer_norm/scale", "mlp_norm/scale", "mlp/gate/kernel", "mlp/up/kernel", "mlp/down/kernel"}
    mixers = (ssm | attn | {"predictor/kernel", "predictor/bias"}, attn)
    expected = {"params/embed/embedding", "params/norm/scale", "params/head/kernel"} | {
        f"params/blocks_{i}/{p}" for i, mixer in enumerate(mixers) for p in block | {f"mixer/{m}" for m in mixer}}
    assert paths == expected
