"""One command for the GPU machine: install, versions, GPU tests, benchmarks with peers, JSON, table.

    python -m benchmarks.gpu_check OUT [--budget 450] [--skip-install]

Run it from the repository root on the GPU machine (Python 3.12, jax 0.11 with CUDA 13, torch,
triton; no network), in one call of the device tool, carrying Mamba-2's sources:

    PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check $OUT
    # device tool: carry=["benchmarks/.peers"], timeout_s=570 (the run takes <= 450 s + ~20 s)

Once, before, on a machine with network (the sdist stays git-ignored, never committed):

    python -m benchmarks.peers.mamba_triton download

Steps, each in its own process with a hard time cap, its output appended to ``OUT/log.txt``:

  install    pip install --no-deps --no-build-isolation -e .   (isolation would need the network;
             a failure is recorded and the run goes on: the steps import from the checkout)
  versions   device, driver and package versions; exit 2 here if jax sees no GPU
  pytest     python -m pytest -m gpu -x ... tests/test_gpu.py
  ceilings   python -m benchmarks.peers.ceilings    (device-to-device copy, bf16 matmul)
  kernels    python -m benchmarks.kernels --sizes targets --dtypes bfloat16   (+ Mamba-2 Triton)
  attention  python -m benchmarks.attention --sizes targets   (+ cuDNN, PyTorch SDPA)
  tangent    python -m benchmarks.tangent --preset B/16 --batch 32 --dtype bfloat16 --ks 1,12

A step's hard cap is its share of ``--budget`` plus what earlier steps left unused; a benchmark
also gets ``--time-cap`` ``SOFT_MARGIN`` seconds below it, so that it stops starting entries and
still writes its JSON. The children run with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so that JAX
and PyTorch share the GPU. ``OUT`` receives at most 8 files (the device tool brings back no more):
``gpu_check.json`` (versions, steps, commands, the target figures), ``table.md``, ``log.txt`` and
the four benchmark JSON files. The last lines printed are the steps and the issue-12 targets
against the measured figures. Exit status: 0 all steps passed, 1 a step failed or timed out,
2 no GPU (one line, at once, nothing written).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOFT_MARGIN = 25.0  # seconds between a benchmark's --time-cap and its hard cap
NO_GPU_EXIT = 2

VERSIONS_CODE = """
import json
from benchmarks import common
info = common.device_info()
print("VERSIONS " + json.dumps({"device": info, "versions": common.package_versions()}))
raise SystemExit(0 if info["platform"] == "gpu" else 2)
"""


@dataclasses.dataclass(frozen=True)
class Step:
    """One process of the check: ``share`` seconds of the budget; ``capped``: takes --time-cap."""

    name: str
    command: tuple[str, ...]
    share: float
    capped: bool = False


def steps(out: Path) -> tuple[Step, ...]:
    py = sys.executable
    bench = ("--out", str(out))
    return (
        Step("install", (py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."),
             30),
        Step("versions", (py, "-c", VERSIONS_CODE), 30),
        Step("pytest", (py, "-m", "pytest", "-m", "gpu", "-x", "-v", "-p", "no:cacheprovider",
                        "--durations=10", "tests/test_gpu.py"), 160),
        Step("ceilings", (py, "-m", "benchmarks.peers.ceilings", *bench), 20, True),
        Step("kernels", (py, "-m", "benchmarks.kernels", "--sizes", "targets", "--dtypes",
                         "bfloat16", *bench), 100, True),
        Step("attention", (py, "-m", "benchmarks.attention", "--sizes", "targets", "--repeats",
                           "5", *bench), 80, True),
        Step("tangent", (py, "-m", "benchmarks.tangent", "--preset", "B/16", "--batch", "32",
                         "--dtype", "bfloat16", "--ks", "1,12", "--repeats", "5", *bench), 30, True),
    )


def no_gpu_reason() -> str | None:
    """Why this machine has no usable NVIDIA GPU, or None (asks nvidia-smi; imports nothing)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "nvidia-smi is not on PATH"
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi -L failed: {err}"
    if listed.returncode != 0 or "GPU " not in listed.stdout:
        return f"nvidia-smi -L lists no GPU (exit {listed.returncode})"
    return None


def run_step(step: Step, cap: float, log: Path, env: dict) -> dict:
    """Run ``step`` with a hard cap of ``cap`` seconds, its output streamed into ``log``."""
    command = list(step.command)
    soft = None
    if step.capped:
        soft = max(5.0, cap - SOFT_MARGIN)
        command += ["--time-cap", f"{soft:.0f}"]
    shown = ["python", "-c", "<versions>"] if step.name == "versions" else ["python", *command[1:]]
    record = {"name": step.name, "command": " ".join(shown), "cap_s": round(cap),
              "soft_cap_s": soft and round(soft)}
    start = time.monotonic()
    with log.open("a") as sink:
        sink.write(f"\n===== {step.name}: {record['command']} (cap {cap:.0f} s)\n")
        sink.flush()
        offset = sink.tell()
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=cap)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            status = f"timed out after {cap:.0f} s"
    with log.open() as source:
        source.seek(offset)
        output = source.read()
    record.update(status=status, wall_s=round(time.monotonic() - start, 1),
                  returncode=proc.returncode, summary=summarize_output(step.name, output))
    return record


def summarize_output(name: str, output: str):
    """The part of a step's output worth keeping in gpu_check.json."""
    if name == "versions":
        line = next((ln for ln in output.splitlines() if ln.startswith("VERSIONS ")), None)
        return json.loads(line[len("VERSIONS "):]) if line else output[-2000:]
    if name == "pytest":
        counts = dict((word, int(n)) for n, word in
                      re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)", output))
        failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.M)
        return {"counts": counts, "failures": failures, "tail": output[-3000:]}
    return output[-1500:]


def load_results(out: Path) -> dict:
    """``{benchmark name: record}`` of the JSON files the benchmarks wrote into ``out``."""
    records = {}
    for path in sorted(out.glob("*.json")):
        if path.name != "gpu_check.json":
            try:
                record = json.loads(path.read_text())
            except json.JSONDecodeError as err:  # a benchmark killed while writing
                record = {"rows": [], "error": f"{path.name}: {err}"}
            records[record.get("benchmark", path.stem.rsplit("-", 1)[-1])] = record
    return records


def nvidia_smi() -> str:
    """One CSV line per GPU: name, driver, memory, maximum SM and memory clocks."""
    query = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem"
    done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or done.stderr.strip()


def describe(versions: dict) -> str:
    """One line: device and the versions that matter, from the versions step's summary."""
    if not isinstance(versions, dict) or "device" not in versions:
        return "versions unknown (see log.txt)"
    device, packages = versions["device"], versions["versions"]
    names = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "torch", "triton")
    return (f"{device['device_kind']} x{device['device_count']}, python {device['python']}; "
            + ", ".join(f"{n} {packages[n]}" for n in names if n in packages))


def _row(rows, **match) -> dict:
    """The first of ``rows`` whose items include ``match`` ({} if none)."""
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), {})


def targets(results: dict) -> list[dict]:
    """Issue 12's targets against the figures in ``results`` (see ``load_results``).

    Each row: ``target``, ``measured`` (a rate, or a ratio of two rows' figures), ``goal``,
    ``met`` ("yes", "NO" or "" without a goal or a figure) and ``note`` (why a figure is missing:
    the row's error or skip, or "not run").
    """
    out = []

    def add(target, num, den=None, goal="", at_least=None, at_most=None):
        """``num``/``den``: (row, key); measured = num / den, or num alone."""
        parts = [num] if den is None else [num, den]
        values = [row.get(key) for row, key in parts]
        missing = [row for (row, _), value in zip(parts, values) if value is None]
        note = next((str(r.get("error") or r.get("skipped"))[:100] for r in missing
                     if r.get("error") or r.get("skipped")), "not run" if missing else "")
        measured = None if missing else values[0] / (values[1] if den else 1)
        met = None
        if measured is not None and (at_least is not None or at_most is not None):
            met = (at_least is None or measured >= at_least) and (at_most is None or measured <= at_most)
        out.append({"target": target, "measured": measured, "goal": goal,
                    "met": {True: "yes", False: "NO", None: ""}[met], "note": note})

    ceil = results.get("ceilings", {}).get("rows", [])
    copy = _row(ceil, impl="torch copy_")
    copy = copy if "GB/s" in copy else _row(ceil, impl="jax 2*x")
    add(f"copy bandwidth GB/s ({copy.get('impl', 'ceiling')})", (copy, "GB/s"))
    for impl in ("jax", "torch"):
        add(f"bf16 matmul TFLOP/s ({impl})", (_row(ceil, ceiling="matmul bf16", impl=impl), "TFLOP/s"))

    kern = results.get("kernels", {}).get("rows", [])
    scan = dict(op="selective_scan", dtype="bfloat16", mode="fwd")
    pallas = _row(kern, form="pallas", **scan)
    add("selective scan fwd GB/s / copy GB/s", (pallas, "GB/s"), (copy, "GB/s"), ">= 0.5",
        at_least=0.5)
    add("selective scan fwd: associative time / pallas time",
        (_row(kern, form="associative", **scan), "ms"), (pallas, "ms"), ">= 3", at_least=3)
    ssd = [r for r in kern if r.get("op") == "ssd" and r.get("dtype") == "bfloat16"]
    for shape in dict.fromkeys(r["shape"] for r in ssd):
        length = shape.strip("()").split(",")[1].strip()
        at = dict(shape=shape, mode="fwd+bwd")
        pallas = _row(ssd, form="pallas", **at)
        add(f"ssd fwd+bwd L {length}: xla time / pallas time", (_row(ssd, form="xla", **at), "ms"),
            (pallas, "ms"), ">= 2", at_least=2)
        add(f"ssd fwd+bwd L {length}: pallas time / Mamba-2 Triton time", (pallas, "ms"),
            (_row(ssd, form="mamba2-triton", **at), "ms"), "<= 1.5", at_most=1.5)

    attn = [r for r in results.get("attention", {}).get("rows", []) if r.get("mode") == "fwd+bwd"]
    kernel = next((r["impl"] for r in attn if r.get("impl", "").startswith("kernel")), None)
    windows = sorted({r["window"] for r in attn})
    lengths = sorted({r["length"] for r in attn})
    for window in windows:
        for length in lengths:
            at = dict(case="swa", window=window, length=length)
            add(f"attention fwd+bwd W {window} L {length}: cuDNN time / kernel time",
                (_row(attn, impl="dot_product_attention (cudnn)", **at), "ms"),
                (_row(attn, impl=kernel, **at), "ms"), ">= 0.9", at_least=0.9)
    if len(lengths) > 1:
        growth = 9 * lengths[-1] / lengths[0] / 8  # 9 for 32K over 4K
        for case in ("swa", "bmojo"):
            for window in windows:
                at = dict(case=case, window=window, impl=kernel)
                add(f"attention ({case}) fwd+bwd W {window}: time(L {lengths[-1]}) / "
                    f"time(L {lengths[0]})", (_row(attn, length=lengths[-1], **at), "ms"),
                    (_row(attn, length=lengths[0], **at), "ms"), f"<= {growth:g}", at_most=growth)

    for row in results.get("tangent", {}).get("rows", []):
        if row.get("model") != "plain":
            add(f"tangent {row['model']}: train step time / plain", (row, "step_x"))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the results (created)")
    parser.add_argument("--budget", type=float, default=450.0,
                        help="seconds for the whole run (default 450, under 8 minutes)")
    parser.add_argument("--skip-install", action="store_true",
                        help="leave out the pip install step (the project is installed already)")
    args = parser.parse_args(argv)
    if not 60 <= args.budget <= 3600:
        parser.error(f"--budget must lie in [60, 3600] seconds; got {args.budget}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"OUT={args.out} exists and is not a folder")
    reason = no_gpu_reason()
    if reason is not None:
        print(f"gpu_check: no GPU here ({reason}); run it on the GPU machine", flush=True)
        return NO_GPU_EXIT

    start = time.monotonic()
    deadline = start + args.budget
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1")
    plan = tuple(s for s in steps(out) if not (args.skip_install and s.name == "install"))
    smi = nvidia_smi()
    records = []
    for i, step in enumerate(plan):
        later = sum(s.share for s in plan[i + 1:])
        cap = max(5.0, deadline - time.monotonic() - later)
        record = run_step(step, cap, log, env)
        records.append(record)
        print(f"gpu_check: {step.name}: {record['status']} in {record['wall_s']} s", flush=True)
        if step.name == "versions":
            print(f"gpu_check: {smi}; {describe(record['summary'])}", flush=True)
        if step.name == "versions" and record["returncode"] == NO_GPU_EXIT:
            print("gpu_check: jax sees no GPU (see log.txt); stopping", flush=True)
            break

    from benchmarks import common  # imports jax: only now, never before the GPU check

    results = load_results(out)
    target_rows = targets(results)
    step_table = common.format_table(records, ["name", "status", "wall_s", "cap_s"])
    target_table = common.format_table(target_rows, ["target", "measured", "goal", "met", "note"])
    summary = {"command": "python -m benchmarks.gpu_check " + " ".join(sys.argv[1:]),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "nvidia_smi": smi, "budget_s": args.budget,
               "wall_s": round(time.monotonic() - start, 1),
               "steps": records, "targets": target_rows,
               "results_files": sorted(p.name for p in out.glob("*.json"))}
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "table.md").write_text(step_table + "\n\n" + target_table + "\n")
    print("\n" + step_table + "\n\n" + target_table, flush=True)
    if records[-1]["name"] == "versions" and records[-1]["returncode"] == NO_GPU_EXIT:
        return NO_GPU_EXIT
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
