"""Exact reductions of BMojoLayer, checked against NumPy float64 oracles written from the math:
attention only (SSM and store off) is (sliding-window / causal) attention with RoPE and grouped
kv heads; SSM only is the Mamba-1 / Mamba-2 mixer."""

import jax
import numpy as np
import pytest

import bmojo

BATCH, LENGTH = 2, 12


def _layer(kind, **fields):
    base = dict(vocab_size=8, d_model=16, n_layers=1, n_heads=4, n_kv_heads=2, window=4, ssm_state=4,
                d_ff=0, max_len=LENGTH, ssm_head_dim=8, ssd_chunk_size=8, block_types=(kind,))
    config = bmojo.ModelConfig(**{**base, **fields})
    layer = bmojo.BMojoLayer(config, kind)
    x = jax.random.normal(jax.random.key(0), (BATCH, LENGTH, config.d_model))
    params = layer.init(jax.random.key(1), x)
    return config, layer, params, x


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _rope(x, base=10000.0):
    """Rotary embedding as complex rotation: pair (x_i, x_{i+half}) -> (x_i + i x_{i+half}) e^{i p w_i}."""
    half = x.shape[-1] // 2
    w = base ** (-np.arange(half) / half)
    z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * np.arange(x.shape[1])[:, None, None] * w)
    return np.concatenate([z.real, z.imag], axis=-1)


def _attention(p, x, window):
    q = _rope(np.einsum("bld,dhk->blhk", x, p["q_proj"]["kernel"]))
    k = _rope(np.einsum("bld,dhk->blhk", x, p["k_proj"]["kernel"]))
    v = np.einsum("bld,dhk->blhk", x, p["v_proj"]["kernel"])
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    s = np.einsum("bihk,bjhk->bhij", q, k) / np.sqrt(q.shape[-1])
    i, j = np.arange(x.shape[1])[:, None], np.arange(x.shape[1])[None]
    s = np.where((j <= i) & (j > i - window), s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    out = np.einsum("bhij,bjhk->bihk", a / a.sum(-1, keepdims=True), v)
    return np.einsum("blhk,hkd->bld", out, p["o_proj"]["kernel"])


def _silu(x):
    return x / (1 + np.exp(-x))


def _softplus(x):
    return np.log1p(np.exp(x))


def _conv(u, kernel, bias):
    width, length = kernel.shape[0], u.shape[1]
    padded = np.pad(u, ((0, 0), (width - 1, 0), (0, 0)))
    return sum(padded[:, k:k + length] * kernel[k] for k in range(width)) + bias


def _mamba1(p, x, rank, n):
    u, z = np.split(x @ p["in_proj"]["kernel"], 2, axis=-1)
    u = _silu(_conv(u, p["conv_kernel"], p["conv_bias"]))
    proj = u @ p["x_proj"]["kernel"]
    dt = _softplus(proj[..., :rank] @ p["dt_proj"]["kernel"] + p["dt_bias"])
    Bm, Cm = proj[..., rank:rank + n], proj[..., rank + n:]
    A = -np.exp(p["A_log"])
    h = np.zeros(u.shape[:1] + A.shape)
    ys = []
    for t in range(x.shape[1]):
        h = np.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * u[:, t])[:, :, None] * Bm[:, t, None, :]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + p["D"] * u[:, t])
    return (np.stack(ys, 1) * _silu(z)) @ p["out_proj"]["kernel"]


def _mamba2(p, x, e, n, head_dim, eps):
    z, xbc, dt = np.split(x @ p["in_proj"]["kernel"], [e, 2 * e + 2 * n], axis=-1)
    xbc = _silu(_conv(xbc, p["conv_kernel"], p["conv_bias"]))
    xs, Bm, Cm = np.split(xbc, [e, e + n], axis=-1)
    dt = _softplus(dt + p["dt_bias"])
    A = -np.exp(p["A_log"])
    batch, length = x.shape[:2]
    xs = xs.reshape(batch, length, -1, head_dim)
    h = np.zeros((batch, xs.shape[2], head_dim, n))
    ys = []
    for t in range(length):
        h = (np.exp(dt[:, t] * A)[..., None, None] * h
             + (dt[:, t, :, None] * xs[:, t])[..., None] * Bm[:, t, None, None, :])
        ys.append((h * Cm[:, t, None, None, :]).sum(-1) + p["D"][:, None] * xs[:, t])
    y = np.stack(ys, 1).reshape(batch, length, e) * _silu(z)
    y = y / np.sqrt(np.mean(y * y, -1, keepdims=True) + eps) * p["norm"]["scale"]
    return y @ p["out_proj"]["kernel"]


@pytest.mark.parametrize("kind, window", [("swa", LENGTH), ("attention", 2), ("swa", 5)])
def test_attention_only_layer_is_sliding_window_attention(kind, window):
    """SSM and store off: W >= L (and the full-attention block) is causal attention."""
    config, layer, params, x = _layer(kind, window=window)
    y, aux = layer.apply(params, x)
    assert float(aux) == 0.0 and set(params["params"]) == {"attn"}
    window = LENGTH if kind == "attention" else window  # full attention: window max_len = LENGTH
    expected = _attention(_np(params["params"]["attn"]), np.asarray(x, np.float64), window)
    np.testing.assert_allclose(y, expected, atol=2e-5, rtol=1e-5)
    standalone = bmojo.SlidingWindowAttention(config, window)
    np.testing.assert_allclose(standalone.apply({"params": params["params"]["attn"]}, x), y, atol=1e-6)


@pytest.mark.parametrize("ssm_kind", ["mamba1", "mamba2"])
def test_ssm_only_layer_is_the_mamba_mixer(ssm_kind):
    config, layer, params, x = _layer("mamba", ssm_kind=ssm_kind)
    y, aux = layer.apply(params, x)
    assert float(aux) == 0.0 and set(params["params"]) == {"ssm"}
    p, xn = _np(params["params"]["ssm"]), np.asarray(x, np.float64)
    if ssm_kind == "mamba1":
        expected = _mamba1(p, xn, config.dt_rank, config.ssm_state)
        mixer = bmojo.MambaMixer(config)
    else:
        expected = _mamba2(p, xn, config.d_inner, config.ssm_state, config.ssm_head_dim, config.norm_eps)
        mixer = bmojo.Mamba2Mixer(config)
    np.testing.assert_allclose(y, expected, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(mixer.apply({"params": params["params"]["ssm"]}, x), y, atol=1e-6)
