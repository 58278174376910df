"""Mamba-2 state-space duality (SSD): ``api`` (the public function), ``reference``, ``xla`` (the
chunked form), ``pallas`` (the op's primitives and layout) and ``kernels`` (Pallas kernels)."""

from ssm_kernels.ops.ssd.api import ssd

__all__ = ["ssd"]
