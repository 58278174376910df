"""PyTorch's ``scaled_dot_product_attention`` with a sliding-window mask, as a peer of
``bmojo_attention`` with the in-context source only.

Query ``i`` sees keys ``i - W + 1 <= j <= i``: a boolean (length, length) mask, which PyTorch's
flash backend does not take, so the memory-efficient backend is asked for (it computes every
(query, key) block: quadratic work, which the table shows against the linear kernels).
"""

from __future__ import annotations

import importlib.util

from benchmarks.peers import PeerUnavailable


def sliding_window_runners(q, k, v, window: int) -> dict:
    """``{"fwd": (fn, args, sync), "fwd+bwd": ...}`` on the JAX arrays ``q, k, v`` (batch, length,
    heads, head_dim), copied once to PyTorch's (batch, heads, length, head_dim) layout; "fwd+bwd"
    returns the gradients of ``1e-3 * sum(out)`` w.r.t. q, k, v, as ``benchmarks.attention`` does."""
    if importlib.util.find_spec("torch") is None:
        raise PeerUnavailable("PyTorch is not installed")
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not torch.cuda.is_available():
        raise PeerUnavailable("torch sees no CUDA device")
    if k.shape[2] != q.shape[2]:
        raise PeerUnavailable("this peer takes as many key/value heads as query heads")
    q, k, v = (torch.from_dlpack(a).transpose(1, 2).contiguous() for a in (q, k, v))
    pos = torch.arange(q.shape[2], device=q.device)
    visible = (pos[None, :] <= pos[:, None]) & (pos[None, :] > pos[:, None] - window)

    def forward(q, k, v):  # -> (batch, length, heads, head_dim), a view
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=visible)
        return out.transpose(1, 2)

    def forward_backward(q, k, v):
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        loss = (forward(*inputs).float() * 1e-3).sum()
        return torch.autograd.grad(loss, inputs)

    def sync(_):
        torch.cuda.synchronize()

    return {"fwd": (forward, (q, k, v), sync), "fwd+bwd": (forward_backward, (q, k, v), sync)}
