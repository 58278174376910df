"""Mamba-2 state-space duality (SSD): sequential reference, chunked XLA form and Pallas kernels."""

from ssm_kernels.duality.api import ssd

__all__ = ["ssd"]
