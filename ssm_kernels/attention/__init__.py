"""B'MOJO attention: in-context window + fading window + eidetic slots, one softmax."""

from ssm_kernels.attention.api import bmojo_attention

__all__ = ["bmojo_attention"]
