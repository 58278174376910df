"""Timing, device facts and result files shared by every benchmark script.

A benchmark prints a table and writes ``benchmarks/results/<device>-<name>.json`` holding the
device, the jax version, the shapes and the command that produced it. Ratios taken within one
run are the figures to quote on a noisy machine; absolute times count only from a GPU/TPU.
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Dense bf16 tensor-core peak (TFLOP/s) and HBM bandwidth (GB/s) of known accelerators, matched
# against ``device_kind``; used to report achieved fractions of peak.
PEAKS = {
    "H100": {"bf16_tflops": 989.0, "hbm_gbps": 3350.0},
    "H200": {"bf16_tflops": 989.0, "hbm_gbps": 4800.0},
    "A100": {"bf16_tflops": 312.0, "hbm_gbps": 2039.0},
    "TPU v5 lite": {"bf16_tflops": 197.0, "hbm_gbps": 819.0},
    "TPU v5": {"bf16_tflops": 459.0, "hbm_gbps": 2765.0},
    "TPU v4": {"bf16_tflops": 275.0, "hbm_gbps": 1200.0},
}


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


def peak(key: str) -> float | None:
    """The known peak ``key`` (``bf16_tflops`` or ``hbm_gbps``) of the current device, if any."""
    kind = jax.devices()[0].device_kind
    for name, values in PEAKS.items():
        if name.lower() in kind.lower():
            return values[key]
    return None


def time_fn(fn: Callable, *args, warmup: int = 2, repeats: int = 10) -> float:
    """Median wall time in seconds of ``fn(*args)`` (compiled once, outputs blocked on)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``; floats get 4 significant digits."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, rows: Sequence[dict], **extra) -> Path:
    """Write ``benchmarks/results/<device>-<name>.json`` with device facts, command and rows."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{device_slug()}-{name}.json"
    record = {
        "benchmark": name,
        "device": device_info(),
        "command": "python -m benchmarks." + name + " " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
        "rows": list(rows),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
