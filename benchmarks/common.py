"""Timing, time caps, device facts and result files shared by every benchmark script.

A benchmark prints a table and writes ``<device>-<name>.json`` (in ``benchmarks/results/`` of the
working directory, or the folder given by ``--out``) holding the device, the package versions, the shapes and the command
that produced it. Ratios taken within one run are the figures to quote on a noisy machine;
absolute times count only from a GPU/TPU. ``--time-cap`` stops a benchmark from starting new
entries once its seconds are spent; the entries it did not start are listed in the file.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

DEFAULT_OUT = Path("benchmarks") / "results"
"""Where results files go without ``--out``: relative to the working directory (never the installed
package's folder)."""

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s and memory bandwidth in GB/s, from the
# vendors' data sheets, keyed by a pattern of the ``device_kind`` that jax reports (the CUDA device
# name on GPUs). The first matching pattern wins, so specific ones come first; an H100 or H200 of a
# kind not listed gets no peak rather than another model's.
PEAKS = (
    (r"H100 PCIe", {"bf16_tflops": 756.0, "hbm_gbps": 2000.0}),     # "NVIDIA H100 PCIe"
    (r"H100 NVL", {"bf16_tflops": 835.0, "hbm_gbps": 3900.0}),      # "NVIDIA H100 NVL"
    (r"H100 (80GB HBM3|SXM)", {"bf16_tflops": 989.0, "hbm_gbps": 3350.0}),  # "NVIDIA H100 80GB HBM3"
    (r"H200 NVL", {"bf16_tflops": 835.0, "hbm_gbps": 4800.0}),      # "NVIDIA H200 NVL"
    (r"H200$", {"bf16_tflops": 989.0, "hbm_gbps": 4800.0}),         # "NVIDIA H200" (SXM)
    (r"A100.*PCIe", {"bf16_tflops": 312.0, "hbm_gbps": 1935.0}),    # "NVIDIA A100 80GB PCIe"
    (r"A100-SXM4-40GB", {"bf16_tflops": 312.0, "hbm_gbps": 1555.0}),
    (r"A100-SXM4-80GB", {"bf16_tflops": 312.0, "hbm_gbps": 2039.0}),
    (r"TPU v6 lite", {"bf16_tflops": 918.0, "hbm_gbps": 1640.0}),   # Trillium (v6e)
    (r"TPU v5 lite", {"bf16_tflops": 197.0, "hbm_gbps": 819.0}),    # v5e
    (r"TPU v5", {"bf16_tflops": 459.0, "hbm_gbps": 2765.0}),        # v5p
    (r"TPU v4", {"bf16_tflops": 275.0, "hbm_gbps": 1200.0}),
)


# Distributions whose versions a results file records when they are installed.
PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "numpy",
            "torch", "triton", "nvidia-cudnn-cu13", "nvidia-cudnn-cu12")


def package_versions() -> dict:
    """``{distribution: version}`` of the installed ones among ``PACKAGES`` (nothing imported)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def device_info() -> dict:
    """Platform, device kind, count, jax version and the host, for a results file."""
    dev = jax.devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "host": platform.machine(),
    }


def device_slug() -> str:
    """A file-name-safe device name, e.g. ``nvidia-h100-80gb-hbm3`` or ``cpu``."""
    dev = jax.devices()[0]
    name = "cpu" if dev.platform == "cpu" else dev.device_kind
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def device_peaks(device_kind: str) -> dict | None:
    """``{"bf16_tflops": ..., "hbm_gbps": ...}`` of the first ``PEAKS`` pattern found in
    ``device_kind``, or None for a device not listed (CPUs among them)."""
    for pattern, values in PEAKS:
        if re.search(pattern, device_kind.strip(), re.IGNORECASE):
            return values
    return None


def peak(key: str) -> float | None:
    """The known peak ``key`` (``bf16_tflops`` or ``hbm_gbps``) of the current device, if any."""
    values = device_peaks(jax.devices()[0].device_kind)
    return None if values is None else values[key]


def time_fn(fn: Callable, *args, warmup: int = 2, repeats: int = 10,
            sync: Callable = jax.block_until_ready) -> float:
    """Median wall time in seconds of ``fn(*args)`` (compiled once, outputs waited for).

    ``sync(output)`` waits for the device: JAX's ``block_until_ready`` by default; a PyTorch
    peer passes ``lambda _: torch.cuda.synchronize()``.
    """
    for _ in range(warmup):
        sync(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_output(out) -> np.ndarray:
    """The first output leaf as float32 NumPy, from JAX arrays or torch tensors."""
    leaf = out[0] if isinstance(out, (tuple, list)) else out
    if hasattr(leaf, "detach"):  # torch
        return leaf.detach().float().cpu().numpy()
    return np.asarray(leaf, np.float32)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """``max |got - want| / max |want|``: a difference on the scale of the reference."""
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


class TimeCap:
    """A benchmark's time budget in seconds from its creation (``None``: no cap)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.start = time.monotonic()

    def expired(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.start > self.seconds


def positive_seconds(text: str) -> float:
    """argparse type of ``--time-cap``: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds; got {text!r}")
    return value


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """``--out DIR`` (where the JSON goes) and ``--time-cap SECONDS``, shared by every benchmark."""
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for the JSON results file (default: {DEFAULT_OUT}/ in the "
                             "working directory)")
    parser.add_argument("--time-cap", type=positive_seconds, default=None,
                        help="seconds after which no new entry is started (default: no cap)")


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``; floats get 4 significant digits."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, rows: Sequence[dict], out_dir: Path | None = None,
                  module: str | None = None, **extra) -> Path:
    """Write ``<out_dir>/<device>-<name>.json`` (default ``benchmarks/results/`` of the working
    directory) with device facts, package versions, the command (``python -m <module>``, default
    ``benchmarks.<name>``) and rows."""
    out_dir = DEFAULT_OUT if out_dir is None else Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{device_slug()}-{name}.json"
    record = {
        "benchmark": name,
        "device": device_info(),
        "versions": package_versions(),
        "command": " ".join(["python -m", module or f"benchmarks.{name}", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
        "rows": list(rows),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
