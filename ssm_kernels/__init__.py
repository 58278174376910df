"""Reference ops and Pallas kernels for selective scans, SSD and B'MOJO attention (no Flax).

Every op takes ``implementation=``: ``None`` (auto: Pallas on GPU/TPU, XLA elsewhere),
``"xla"`` (parallel pure-JAX form), the op's other XLA forms (e.g. ``"sequential"``, the
``lax.scan`` reference) and, where a kernel exists, ``"pallas"`` and ``"interpret"``.
"""

from ssm_kernels.attention import bmojo_attention
from ssm_kernels.duality import ssd
from ssm_kernels.scan import selective_scan

__all__ = ["bmojo_attention", "selective_scan", "ssd"]
