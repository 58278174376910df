"""Reference ops and Pallas kernels for selective scans, SSD and B'MOJO attention (no Flax).

Every op takes ``implementation=``: ``None`` (auto: Pallas on GPU/TPU, XLA elsewhere),
``"reference"`` (the op's definition, computed step by step or query by query), ``"xla"``
(parallel pure-JAX form), the op's other XLA forms and ``"pallas"`` / ``"interpret"`` (the
Pallas kernels, compiled or interpreted); ``implementations(op)`` lists them. The state-space
ops take ``initial_state`` and a keyword ``chunk_size`` and return ``(output, final state)``.
"""

from ssm_kernels.ops.bmojo_attention.api import IMPLEMENTATIONS as _ATTENTION
from ssm_kernels.ops.bmojo_attention.api import bmojo_attention
from ssm_kernels.ops.selective_scan.api import IMPLEMENTATIONS as _SCAN
from ssm_kernels.ops.selective_scan.api import selective_scan
from ssm_kernels.ops.ssd.api import IMPLEMENTATIONS as _SSD
from ssm_kernels.ops.ssd.api import ssd

_FORMS = {"selective_scan": _SCAN, "ssd": _SSD, "bmojo_attention": _ATTENTION}


def implementations(op: str) -> tuple[str, ...]:
    """The ``implementation=`` names of ``op`` ("selective_scan", "ssd" or "bmojo_attention")."""
    if op not in _FORMS:
        raise ValueError(f"op={op!r} is not an op of ssm_kernels; expected one of {tuple(_FORMS)}")
    return tuple(_FORMS[op])


__all__ = ["bmojo_attention", "implementations", "selective_scan", "ssd"]
