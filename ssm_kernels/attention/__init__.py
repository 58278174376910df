"""B'MOJO attention: in-context window + fading window + eidetic slots, one softmax.

Modules: ``api`` (``bmojo_attention``: validation, dispatch), ``masks`` (visibility rules shared
by every implementation), ``reference`` ("dense"), ``xla`` ("xla", blocked, linear in length),
``pallas_kernels`` + ``pallas`` ("pallas" / "interpret": flash kernels behind differentiable
primitives), ``pallas_compat`` (jax-version and backend guards).
"""

from ssm_kernels.attention.api import bmojo_attention

__all__ = ["bmojo_attention"]
