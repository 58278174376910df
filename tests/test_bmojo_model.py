"""Every preset (and the B'MOJO options: learned predictor, top-k/oldest and threshold rules, aligned
SSM residual, RoPE): jit + finite loss/grads, causality, step-by-step decoding == parallel logits;
greedy/temperature generation; orbax checkpoint round trip."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bmojo

# window 4 and chunk 6 (different on purpose), length 28: 7 windows and 5 chunks.
TINY = dict(vocab_size=32, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, window=4, chunk_size=6,
            ssm_state=4, memory_slots=3, memory_topk=2, max_len=64, d_ff=32, ssm_head_dim=8,
            ssd_chunk_size=16)
LENGTH, CUT = 28, 13
CASES = {name: (name, {}) for name in bmojo.PRESETS} | {
    "bmojo:learned-topk-oldest": ("bmojo", dict(innovation="learned", memory_select="topk",
                                                memory_evict="oldest")),
    "bmojo:residual-rope-threshold": ("bmojo", dict(ssm_residual=True, position_encoding="rope",
                                                    memory_select="threshold", memory_threshold=0.05)),
    "bmojo:storage": ("bmojo", dict(storage_blocks=2, storage_block_size=3, storage_topk=1)),
    "bmojo_f:storage-per-token": ("bmojo_f", dict(storage_blocks=3, storage_block_size=2, storage_topk=2,
                                                  chunk_size=1)),
}


@functools.lru_cache(maxsize=None)
def _run(name):
    """Parallel logits of two sequences that agree up to CUT, and gradients of the loss."""
    base, overrides = CASES[name]
    config = bmojo.preset(base, **(TINY | overrides))
    model = bmojo.LanguageModel(config)
    a = jax.random.randint(jax.random.key(1), (1, LENGTH), 0, config.vocab_size)
    b = a.at[:, CUT + 1:].set(jax.random.randint(jax.random.key(2), (1, LENGTH - CUT - 1), 0, config.vocab_size))
    tokens = jnp.concatenate([a, b]).astype(jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), tokens)

    def loss(p):
        logits, aux = model.apply(p, tokens)
        nll = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1))
        return nll + aux, (logits, aux)

    (value, (logits, aux)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return config, params, tokens, logits, aux, value, grads


@pytest.mark.parametrize("name", CASES)
def test_jit_loss_grads_and_parameter_count(name):
    config, params, tokens, logits, aux, value, grads = _run(name)
    assert logits.shape == (2, LENGTH, config.vocab_size) and logits.dtype == jnp.float32
    assert np.isfinite(float(value)) and np.isfinite(float(aux))
    learned = any(spec.memory for spec in config.layer_specs()) and config.innovation == "learned"
    assert (float(aux) > 0) == learned
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) > 0 for g in leaves) > len(leaves) // 2
    assert sum(x.size for x in jax.tree.leaves(params)) == config.num_params()


@pytest.mark.parametrize("name", CASES)
def test_causality(name):
    logits = _run(name)[3]
    np.testing.assert_allclose(logits[0, :CUT + 1], logits[1, :CUT + 1], atol=1e-5, rtol=0)
    assert float(jnp.abs(logits[0, CUT + 1:] - logits[1, CUT + 1:]).max()) > 1e-3


@functools.lru_cache(maxsize=None)
def _decode_fn(config):
    def run(params, tokens):
        def body(cache, token):
            logits, cache = bmojo.decode_step(config, params, cache, token)
            return cache, logits
        _, logits = jax.lax.scan(body, bmojo.init_cache(config, tokens.shape[0]), tokens.T)
        return jnp.moveaxis(logits, 0, 1)
    return jax.jit(run)


@pytest.mark.parametrize("name", CASES)
def test_decode_matches_parallel(name):
    config, params, tokens, logits = _run(name)[:4]
    stepped = _decode_fn(config)(params, tokens)
    assert float(jnp.abs(stepped - logits).max()) <= 1e-4


def test_decode_cache_holds_each_layers_state():
    """bmojo_attn with TINY sizes: a B'MOJO layer (Mamba-1: d_inner 32, state 4, conv 4; W = 4, C = 6,
    3 slots) and a full-attention layer (max_len 64); one kv head of width 8."""
    config = bmojo.preset("bmojo_attn", **TINY)
    cache = jax.eval_shape(lambda: bmojo.init_cache(config, 2))
    shapes = lambda tree: jax.tree.map(lambda a: a.shape, tree)  # noqa: E731
    assert isinstance(cache, bmojo.ModelCache) and cache.t.shape == ()
    first, second = cache.blocks
    assert shapes(first.ssm) == bmojo.mamba.MambaCache(conv=(2, 3, 32), ssm=(2, 32, 4))
    assert first.context.k.shape == (2, 2 * 4 + 6, 1, 8)  # kept until the token was a store candidate
    assert first.fading.k.shape == (2, 2 * 4, 1, 8) and first.memory.store.k.shape == (2, 3, 1, 8)
    assert first.memory.f_past.shape == (2, config.innovation_order, 16) and first.storage is None
    assert (second.ssm, second.fading, second.memory, second.storage) == (None,) * 4
    assert second.context.k.shape == (2, 64, 1, 8) and second.context.pos.shape == (64,)


def test_decode_cache_size_is_constant():
    config, params, tokens = _run("bmojo")[:3]
    cache = bmojo.init_cache(config, 2)
    _, later = jax.eval_shape(functools.partial(bmojo.decode_step, config), params, cache, tokens[:, 0])
    assert jax.tree.map(lambda a: a.shape, later) == jax.tree.map(lambda a: a.shape, cache)


def test_generate_greedy_follows_parallel_argmax_and_sampling_is_seeded():
    config, params, tokens = _run("bmojo")[:3]
    prompt, steps = tokens[:, :5], 17
    out = bmojo.generate(config, params, prompt, steps)
    assert out.shape == (2, 5 + steps) and bool(jnp.all(out[:, :5] == prompt))
    logits, _ = jax.jit(bmojo.LanguageModel(config).apply)(params, out)
    np.testing.assert_array_equal(out[:, 5:], jnp.argmax(logits[:, 4:-1], -1))
    rng = jax.random.key(3)
    hot = bmojo.generate(config, params, prompt, steps, temperature=1.0, rng=rng)
    again = bmojo.generate(config, params, prompt, steps, temperature=1.0, rng=rng)
    np.testing.assert_array_equal(hot, again)
    assert bool(jnp.all((hot >= 0) & (hot < config.vocab_size)))
    with pytest.raises(ValueError, match="rng"):
        bmojo.generate(config, params, prompt, steps, temperature=1.0)


def test_checkpoint_round_trip(tmp_path):
    config, params, tokens, logits = _run("mamba2")[:4]
    bmojo.save(str(tmp_path / "ckpt"), params, config)
    restored, config2 = bmojo.restore(str(tmp_path / "ckpt"))
    assert config2 == config
    assert jax.tree.structure(restored) == jax.tree.structure(params)
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # a model saved before ssd_block_len was renamed ssd_chunk_size
    saved = tmp_path / "ckpt" / "config.json"
    old = json.loads(saved.read_text())
    old["ssd_block_len"] = old.pop("ssd_chunk_size")
    saved.write_text(json.dumps(old))
    assert bmojo.restore(str(tmp_path / "ckpt"))[1] == config
