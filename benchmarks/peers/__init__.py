"""Peers and ceilings that the benchmarks time side by side with our kernels on a GPU.

- ``ceilings``: a device-to-device copy (bandwidth) and a large bf16 matmul, measured in the run.
- ``mamba_triton``: Mamba-2's Triton SSD kernel from the ``mamba-ssm`` source distribution
  (its Triton modules only), for ``benchmarks.kernels``.
- ``torch_attention``: PyTorch's ``scaled_dot_product_attention`` with a sliding-window mask,
  for ``benchmarks.attention``.

Every peer is optional: one that cannot be imported or run raises :class:`PeerUnavailable`
with the reason, which the benchmark records in its table and JSON before going on.
"""


class PeerUnavailable(RuntimeError):
    """A peer cannot run here; the message says why."""
