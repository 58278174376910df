"""Mamba-1 selective scan: ``api`` (the public function), ``reference``, ``xla`` (associative and
chunked forms), ``pallas`` (the op's primitives and layout) and ``kernels`` (Pallas kernels)."""

from ssm_kernels.ops.selective_scan.api import selective_scan

__all__ = ["selective_scan"]
