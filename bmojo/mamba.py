"""Mamba-1 and Mamba-2 mixers: in-projection, causal depthwise conv, SSM, gated out-projection.

Both mixers map (batch, length, d_model) -> (batch, length, d_model) with ``__call__`` and
advance one token with ``step`` from a ``MambaCache`` (``init_cache``); the same code path serves
both, so decoding reproduces the parallel output.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

import ssm_kernels

from .config import ModelConfig


def causal_conv(x, kernel, bias, state=None):
    """Depthwise causal convolution ``y_t = b + sum_k kernel[k] * x_{t-K+1+k}``.

    x: (batch, length, channels); kernel: (K, channels); bias: (channels,);
    state: (batch, K-1, channels), the inputs before x (zeros if None).
    Returns y (batch, length, channels) and the new state (the last K-1 inputs).
    """
    width = kernel.shape[0]
    if state is None:
        state = jnp.zeros((x.shape[0], width - 1, x.shape[2]), x.dtype)
    padded = jnp.concatenate([state.astype(x.dtype), x], axis=1)
    length = x.shape[1]
    y = sum(padded[:, k:k + length] * kernel[k].astype(x.dtype) for k in range(width))
    return y + bias.astype(x.dtype), padded[:, padded.shape[1] - (width - 1):]


def _dt_bias_init(key, shape, dt_min=1e-3, dt_max=1e-1):
    """softplus^{-1} of log-uniform time steps in [dt_min, dt_max] (Mamba's initialisation)."""
    dt = jnp.exp(jax.random.uniform(key, shape) * (math.log(dt_max) - math.log(dt_min))
                 + math.log(dt_min))
    return dt + jnp.log(-jnp.expm1(-dt))


def _conv_init(key, shape):
    return jax.random.uniform(key, shape, minval=-1.0, maxval=1.0) / math.sqrt(shape[0])


@struct.dataclass
class MambaCache:
    """Decoding state of one mixer (float32): ``conv`` (batch, conv_width - 1, channels), the last
    inputs of the convolution, and ``ssm``, the SSM state (Mamba-1: (batch, d_inner, ssm_state);
    Mamba-2: (batch, ssm_heads, ssm_head_dim, ssm_state))."""

    conv: jax.Array
    ssm: jax.Array


class MambaMixer(nn.Module):
    """Mamba-1: ``out(selective_scan(silu(conv(W_x x)), dt, A, B, C, D, z=W_z x))``.

    dt = softplus(dt_proj(x_proj_dt) + dt_bias), A = -exp(A_log) (d_inner, state).
    """

    config: ModelConfig

    def setup(self):
        c = self.config
        e, n, r = c.d_inner, c.ssm_state, c.dt_rank
        self.in_proj = nn.Dense(2 * e, use_bias=False, dtype=c.dtype)
        self.conv_kernel = self.param("conv_kernel", _conv_init, (c.conv_width, e))
        self.conv_bias = self.param("conv_bias", nn.initializers.zeros, (e,))
        self.x_proj = nn.Dense(r + 2 * n, use_bias=False, dtype=c.dtype)
        self.dt_proj = nn.Dense(e, use_bias=False, dtype=c.dtype)
        self.dt_bias = self.param("dt_bias", _dt_bias_init, (e,))
        self.A_log = self.param(
            "A_log", lambda _, s: jnp.log(jnp.broadcast_to(jnp.arange(1, n + 1, dtype=jnp.float32), s)),
            (e, n))
        self.D = self.param("D", nn.initializers.ones, (e,))
        self.out_proj = nn.Dense(c.d_model, use_bias=False, dtype=c.dtype)

    @staticmethod
    def init_cache(config: ModelConfig, batch: int) -> MambaCache:
        """Zero states for ``batch`` sequences."""
        c = config
        return MambaCache(conv=jnp.zeros((batch, c.conv_width - 1, c.d_inner), jnp.float32),
                          ssm=jnp.zeros((batch, c.d_inner, c.ssm_state), jnp.float32))

    def _forward(self, x, state: MambaCache | None, implementation):
        c = self.config
        u, z = jnp.split(self.in_proj(x), 2, axis=-1)
        u, conv = causal_conv(u, self.conv_kernel, self.conv_bias, None if state is None else state.conv)
        u = nn.silu(u)
        dt, B, C = jnp.split(self.x_proj(u), [c.dt_rank, c.dt_rank + c.ssm_state], axis=-1)
        dt = self.dt_proj(dt)
        t = lambda a: jnp.swapaxes(a, 1, 2)  # noqa: E731  (batch, length, ch) <-> (batch, ch, length)
        y, h = ssm_kernels.selective_scan(
            t(u), t(dt), -jnp.exp(self.A_log), t(B), t(C), D=self.D, z=t(z),
            delta_bias=self.dt_bias, delta_softplus=True,
            initial_state=None if state is None else state.ssm, implementation=implementation)
        return self.out_proj(t(y)), MambaCache(conv=conv.astype(jnp.float32), ssm=h)

    def __call__(self, x):
        """x: (batch, length, d_model) -> (batch, length, d_model)."""
        return self._forward(x, None, self.config.scan_implementation)[0]

    def step(self, x, state: MambaCache):
        """One token x: (batch, d_model) and the state -> (y (batch, d_model), new state)."""
        y, state = self._forward(x[:, None], state, "reference")
        return y[:, 0], state


class Mamba2Mixer(nn.Module):
    """Mamba-2: ``out(norm(ssd(x dt, A dt, B, C) + D x) * silu(z))`` with scalar decay per head.

    (z, xBC, dt) = in_proj(x); xBC = silu(conv(xBC)); dt = softplus(dt + dt_bias);
    A = -exp(A_log) per head; one B/C group shared by all heads.
    """

    config: ModelConfig

    def setup(self):
        c = self.config
        e, n, h = c.d_inner, c.ssm_state, c.ssm_heads
        self.in_proj = nn.Dense(2 * e + 2 * n + h, use_bias=False, dtype=c.dtype)
        self.conv_kernel = self.param("conv_kernel", _conv_init, (c.conv_width, e + 2 * n))
        self.conv_bias = self.param("conv_bias", nn.initializers.zeros, (e + 2 * n,))
        self.dt_bias = self.param("dt_bias", _dt_bias_init, (h,))
        self.A_log = self.param(
            "A_log", lambda key, s: jnp.log(jax.random.uniform(key, s, minval=1.0, maxval=16.0)), (h,))
        self.D = self.param("D", nn.initializers.ones, (h,))
        self.norm = nn.RMSNorm(epsilon=c.norm_eps, dtype=c.dtype)
        self.out_proj = nn.Dense(c.d_model, use_bias=False, dtype=c.dtype)

    @staticmethod
    def init_cache(config: ModelConfig, batch: int) -> MambaCache:
        """Zero states for ``batch`` sequences."""
        c = config
        return MambaCache(conv=jnp.zeros((batch, c.conv_width - 1, c.d_inner + 2 * c.ssm_state), jnp.float32),
                          ssm=jnp.zeros((batch, c.ssm_heads, c.ssm_head_dim, c.ssm_state), jnp.float32))

    def _forward(self, x, state: MambaCache | None, implementation, chunk_size):
        c = self.config
        e, n, h, p = c.d_inner, c.ssm_state, c.ssm_heads, c.ssm_head_dim
        batch, length = x.shape[:2]
        z, xbc, dt = jnp.split(self.in_proj(x), [e, 2 * e + 2 * n], axis=-1)
        xbc, conv = causal_conv(xbc, self.conv_kernel, self.conv_bias, None if state is None else state.conv)
        xs, B, C = jnp.split(nn.silu(xbc), [e, e + n], axis=-1)
        dt = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias)  # (batch, length, heads)
        xs = xs.reshape(batch, length, h, p)
        Y, final = ssm_kernels.ssd(
            (xs.astype(jnp.float32) * dt[..., None]).astype(x.dtype), -jnp.exp(self.A_log) * dt,
            B[:, :, None, :], C[:, :, None, :], None if state is None else state.ssm,
            chunk_size=chunk_size, implementation=implementation)
        y = (Y + xs * self.D[:, None].astype(x.dtype)).reshape(batch, length, e)
        y = self.norm(y * nn.silu(z))
        return self.out_proj(y), MambaCache(conv=conv.astype(jnp.float32), ssm=final)

    def __call__(self, x):
        """x: (batch, length, d_model) -> (batch, length, d_model)."""
        c = self.config
        return self._forward(x, None, c.scan_implementation, c.ssd_chunk_size)[0]

    def step(self, x, state: MambaCache):
        """One token x: (batch, d_model) and the state -> (y (batch, d_model), new state)."""
        y, state = self._forward(x[:, None], state, "reference", 1)
        return y[:, 0], state


def mixer_type(ssm_kind: str) -> type[MambaMixer] | type[Mamba2Mixer]:
    """The mixer class that ``ssm_kind`` ("mamba1" or "mamba2") names."""
    return MambaMixer if ssm_kind == "mamba1" else Mamba2Mixer
