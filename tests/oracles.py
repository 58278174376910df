"""Float64 NumPy oracles of the three ops, written from their definitions (loops over positions).

Each takes the keyword arrays of its op (``benchmarks.kernels.*_inputs``) and returns its outputs.
"""

import numpy as np


def _f64(x):
    return None if x is None else np.asarray(x, np.float64)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, **_):
    """(y, last state): h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t . h_t + D u_t (* silu z)."""
    u, delta, A, B, C = map(_f64, (u, delta, A, B, C))
    batch, dim, length = u.shape
    dt = delta + (0.0 if delta_bias is None else _f64(delta_bias)[:, None])
    if delta_softplus:
        dt = np.log1p(np.exp(dt))
    B, C = (M[:, None] if M.ndim == 3 else M for M in (B, C))
    gb, gc = dim // B.shape[1], dim // C.shape[1]
    h = np.zeros((batch, dim, A.shape[1])) if initial_state is None else _f64(initial_state).copy()
    y = np.zeros((batch, dim, length))
    for t in range(length):
        for d in range(dim):
            h[:, d] = (np.exp(dt[:, d, t, None] * A[d]) * h[:, d]
                       + (dt[:, d, t] * u[:, d, t])[:, None] * B[:, d // gb, :, t])
            y[:, d, t] = np.sum(C[:, d // gc, :, t] * h[:, d], axis=-1)
    if D is not None:
        y = y + _f64(D)[:, None] * u
    if z is not None:
        z = _f64(z)
        y = y * z / (1.0 + np.exp(-z))
    return y, h


def ssd(X, A, B, C, initial_state=None, **_):
    """(Y, final state): h_t = exp(A_t) h_{t-1} + outer(X_t, B_t), Y_t = h_t C_t per head."""
    X, A, B, C = map(_f64, (X, A, B, C))
    batch, length, heads, headdim = X.shape
    per_group = heads // B.shape[2]
    h = (np.zeros((batch, heads, headdim, B.shape[3])) if initial_state is None
         else _f64(initial_state).copy())
    Y = np.zeros_like(X)
    for t in range(length):
        for hd in range(heads):
            g = hd // per_group
            h[:, hd] = (np.exp(A[:, t, hd])[:, None, None] * h[:, hd]
                        + X[:, t, hd, :, None] * B[:, t, g, None, :])
            Y[:, t, hd] = np.einsum("bpn,bn->bp", h[:, hd], C[:, t, g])
    return Y, h


def bmojo_attention(q, k, v, window, fading_k=None, fading_v=None, memory_k=None, memory_v=None,
                    memory_pos=None, memory_chunk=None, scale=None, **_):
    """(out, lse): for each query, list the visible keys of every source and take a softmax."""
    q, k, v, fading_k, fading_v, memory_k, memory_v = map(
        _f64, (q, k, v, fading_k, fading_v, memory_k, memory_v))
    memory_pos = None if memory_pos is None else np.asarray(memory_pos)
    batch, length, heads, head_dim = q.shape
    group = heads // k.shape[2]
    scale = head_dim ** -0.5 if scale is None else scale
    horizon = window + (window if fading_k is not None else 0)
    out, lse = np.zeros(q.shape), np.zeros(q.shape[:3])
    for b in range(batch):
        for i in range(length):
            for h in range(heads):
                kh = h // group
                keys = [(k[b, j, kh], v[b, j, kh]) for j in range(max(0, i - window + 1), i + 1)]
                if fading_k is not None:
                    keys += [(fading_k[b, j, kh], fading_v[b, j, kh])
                             for j in range(max(0, i - 2 * window + 1), i - window + 1)]
                if memory_k is not None:
                    mk, mv, mp = memory_k[b], memory_v[b], memory_pos[b]
                    if np.ndim(memory_k) == 5:
                        c = i // memory_chunk
                        mk, mv, mp = mk[c], mv[c], mp[c]
                    keys += [(mk[s, kh], mv[s, kh]) for s in range(len(mp))
                             if 0 <= mp[s] <= i - horizon]
                scores = scale * np.stack([key for key, _ in keys]) @ q[b, i, h]
                m = scores.max()
                w = np.exp(scores - m)
                lse[b, i, h] = m + np.log(w.sum())
                out[b, i, h] = (w / w.sum()) @ np.stack([val for _, val in keys])
    return out, lse
