"""Bad and unusual inputs to the models: token ids checked where they enter (never a NaN everywhere
or a wrap-around), non-finite values reaching no earlier position in any layer type or preset, zero
length, a 0-slot store, and wrong shapes named in the error."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bmojo

SIZES = dict(vocab_size=16, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, window=3, chunk_size=4,
             ssm_state=4, memory_slots=3, max_len=32, d_ff=16, ssm_head_dim=8, ssd_chunk_size=8)
LENGTH, T = 20, 11


@functools.lru_cache(maxsize=None)
def _model(name):
    config = bmojo.preset(name, **SIZES)
    model = bmojo.LanguageModel(config)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, LENGTH), jnp.int32))
    return config, model, params


def _tokens():
    return jax.random.randint(jax.random.key(1), (2, LENGTH), 0, SIZES["vocab_size"])


@pytest.mark.parametrize("bad", [16, -1])
def test_out_of_range_ids_are_refused_where_they_enter(bad):
    config, model, params = _model("bmojo")
    tokens = _tokens().at[1, T].set(bad)
    with pytest.raises(ValueError, match=r"ids in \[0, 16\)"):
        model.apply(params, tokens)
    with pytest.raises(ValueError, match=r"prompt .*ids in \[0, 16\)"):
        bmojo.generate(config, params, tokens[:, :5].at[0, 2].set(bad), 3)
    cache = bmojo.init_cache(config, 2)
    with pytest.raises(ValueError, match=r"token .*ids in \[0, 16\)"):
        bmojo.decode_step(config, params, cache, jnp.array([0, bad]))


@pytest.mark.parametrize("name", bmojo.PRESETS)
def test_a_bad_id_under_jit_poisons_only_its_own_and_later_positions(name):
    """Traced ids cannot raise: the bad token's embedding is NaN, never another token's (-1 is not
    read as the last token), and the logits before it are bit-for-bit those of the clean input."""
    config, model, params = _model(name)
    apply = jax.jit(model.apply)
    clean, _ = apply(params, _tokens())
    for bad in (SIZES["vocab_size"], -1):
        logits, _ = apply(params, _tokens().at[1, T].set(bad))
        np.testing.assert_array_equal(logits[1, :T], clean[1, :T])
        np.testing.assert_array_equal(logits[0], clean[0])
        assert bool(jnp.all(jnp.isnan(logits[1, T])))


@pytest.mark.parametrize("kind", list(bmojo.BlockType))
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_input_reaches_no_earlier_position_of_any_layer(kind, value):
    config = bmojo.ModelConfig(**{**SIZES, "n_layers": 1, "block_types": (kind,)})
    layer = bmojo.BMojoLayer(config, kind)
    x = jax.random.normal(jax.random.key(2), (2, LENGTH, config.d_model))
    params = layer.init(jax.random.key(3), x)
    apply = jax.jit(layer.apply)
    clean, _ = apply(params, x)
    dirty, _ = apply(params, x.at[1, T, 3].set(value))
    np.testing.assert_array_equal(dirty[1, :T], clean[1, :T])
    np.testing.assert_array_equal(dirty[0], clean[0])


@pytest.mark.parametrize("tokens, match", [
    (jnp.zeros((5,), jnp.int32), r"tokens has shape \(5,\); expected rank 2 \(batch, length\)"),
    (jnp.zeros((1, 5, 2), jnp.int32), r"tokens has shape \(1, 5, 2\)"),
    (jnp.zeros((1, 5), jnp.float32), "integer token ids"),
])
def test_wrong_tokens_are_named(tokens, match):
    _, model, params = _model("swa")
    with pytest.raises(ValueError, match=match):
        model.apply(params, tokens)


def test_decode_step_token_shape_and_generate_temperature_are_checked():
    config, _, params = _model("bmojo")
    cache = bmojo.init_cache(config, 2)
    with pytest.raises(ValueError, match=r"token has shape \(3,\); expected \(2,\) \(batch,\)"):
        bmojo.decode_step(config, params, cache, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match=r"token has shape \(2, 1\)"):
        bmojo.decode_step(config, params, cache, jnp.zeros((2, 1), jnp.int32))
    prompt = _tokens()[:, :4]
    for temperature in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            bmojo.generate(config, params, prompt, 3, temperature=temperature, rng=jax.random.key(0))


def test_a_store_of_zero_slots_is_no_store():
    """bmojo with memory_slots=0 is bmojo_f: the same parameters and the same logits."""
    _, model_f, params = _model("bmojo_f")
    zero = bmojo.LanguageModel(bmojo.preset("bmojo", **{**SIZES, "memory_slots": 0}))
    tokens = _tokens()
    assert jax.tree.structure(jax.eval_shape(zero.init, jax.random.key(0), tokens)) == jax.tree.structure(params)
    np.testing.assert_array_equal(jax.jit(zero.apply)(params, tokens)[0], jax.jit(model_f.apply)(params, tokens)[0])


@pytest.mark.parametrize("name", ["transformer", "mamba", "mamba2", "bmojo"])
def test_zero_length_gives_empty_logits(name):
    config, model, params = _model(name)
    logits, aux = jax.jit(model.apply)(params, jnp.zeros((2, 0), jnp.int32))
    assert logits.shape == (2, 0, config.vocab_size) and np.isfinite(float(aux))
