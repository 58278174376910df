"""Mamba-1 selective scan: reference, XLA forms and Pallas kernels behind one function."""

from ssm_kernels.scan.api import selective_scan

__all__ = ["selective_scan"]
