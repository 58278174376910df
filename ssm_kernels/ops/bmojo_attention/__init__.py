"""B'MOJO attention: in-context window + fading window + eidetic slots, one softmax.

Modules: ``api`` (``bmojo_attention``: validation, dispatch), ``masks`` (visibility rules shared
by every implementation and by B'MOJO's decoder), ``reference`` (naive masked attention),
``softmax`` (one softmax over several sources), ``xla`` (blocked, linear in length), ``pallas``
(the op's primitives and layout), ``kernels`` (flash kernels), ``nonfinite`` (NaN and inf reach
only the queries that see them).
"""

from ssm_kernels.ops.bmojo_attention.api import bmojo_attention

__all__ = ["bmojo_attention"]
