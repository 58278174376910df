"""On a CUDA GPU: the Pallas kernels against the XLA forms on the device, and B'MOJO decoding.

The tests marked ``gpu`` are skipped without a GPU; on the GPU machine ``python -m
benchmarks.gpu_check OUT`` runs them (``pytest -m gpu -x tests/test_gpu.py``). Each case runs
``implementation="pallas"`` and, as the reference, the op's "xla" form at
``jax.default_matmul_precision("highest")``, both on the device, in four modes: forward,
``jax.grad``, ``jax.jvp`` and the gradient of a JVP (forward and grad only at the benchmark's
paper shapes). The loss of ``grad`` is linear in the outputs (fixed float32 weights), so that its
cotangent does not depend on how an output was rounded; that of grad-of-JVP adds half the squared
JVP, so that the tangent kernels' outputs reach the reverse pass (which, past the kernels' own
passes, differentiates the pure-JAX forms: see ``ssm_kernels/_kernel_op.py``). A mode passes when,
for every output,
``max |pallas - xla| <= tol * max |xla|``, with ``tol`` from ``TOL``:

- ``highest`` (float32, Triton dots in IEEE float32): both sides differ by summation order and
  exp/log rounding only, ~1e-6 of the largest value; 5e-5 forward, 2e-4 for derivatives.
- ``default`` (float32, TF32): XLA and the Triton dots round matmul inputs to TF32, 11 significant
  bits (unit roundoff u = 2**-11 ~ 4.9e-4). For inputs of random sign a dot's error is about u
  times its typical size, so the worst of ~1e7 outputs is a few u of the largest one, and SSD and
  attention chain two or three matmuls (and a softmax): ~2e-3 expected. 1e-2 forward and 2e-2 for
  derivatives (whose backward chains more matmuls) leave a 5x margin while a wrong mask, block
  edge or chunk hand-off (errors of order 1e-1 to 1 of the largest value) still fails.
- ``bfloat16``: the same bf16 inputs on both sides; outputs rounded to 8 significant bits
  (u = 2**-9 ~ 2e-3) and attention's probabilities rounded to bf16 before the value matmul, as
  in FlashAttention: 2e-2 forward, 5e-2 derivatives (the interpret-mode tests' bf16 bounds).

The CPU tests at the end check the script's fast failure without a GPU and its target table.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bmojo
import ssm_kernels
from benchmarks import attention as attention_bench
from benchmarks import gpu_check
from benchmarks import kernels as kernel_bench
from tests import test_bmojo_model as model_tests

REPO = Path(__file__).resolve().parents[1]
ON_GPU = jax.default_backend() == "gpu"
NEEDS_GPU = pytest.mark.skipif(
    not ON_GPU, reason=f"needs a CUDA GPU (jax's backend is {jax.default_backend()!r}); on the "
                       "GPU machine run `python -m benchmarks.gpu_check OUT`")


def on_gpu(test):
    return pytest.mark.gpu(NEEDS_GPU(test))


TOL = {  # precision: (forward, derivatives), relative to the largest reference value
    "highest": (5e-5, 2e-4),
    "default": (1e-2, 2e-2),
    "bfloat16": (2e-2, 5e-2),
}
# Decoding step by step vs the parallel pass, both at the default (TF32) precision: the same
# bound as TOL["default"] forward, relative to max(1, max |logits|).
DECODE_TOL = 1e-2


# ------------------------------------------------------------------------------- problems


# "edges" shapes (benchmarks.kernels.SIZES): selective scan 40 channels per group (a full and a
# padded 32-channel tile), length 100 (padded 16-step chunk), grouped B, D, z, delta_bias and an
# initial state, state 16 or 5 ("odd-state": padded to 8 for Triton); ssd length 100 with chunk
# 32 (padded last chunk), headdim 24 -> 32 and state 20 -> 32 (Triton tiles), grouped B/C;
# attention length 100 (two 64-row blocks, the second padded), W 40 and fading 80 crossing them,
# snapshots every 30 rows, head_dim 24 -> 32 and 5 slots -> 16 (Triton), 2 kv heads.
EDGES = {"selective_scan": (kernel_bench.selective_scan_inputs, dict(groups_b=2), {}),
         "ssd": (kernel_bench.ssd_inputs, dict(groups=2), dict(chunk_size=32)),
         "attention": (kernel_bench.attention_inputs, dict(memory="chunked", slots=5, chunk=30),
                       dict(window=40))}


@functools.lru_cache(maxsize=None)
def problem(op: str, shape: str, dtype: str):
    """``(fn, primals, tangents)``: ``fn(implementation)(*primals)`` -> tuple of outputs;
    ``tangents`` None where only forward and grad are checked (the paper shapes)."""
    dtype = jnp.dtype(dtype)
    if shape == "paper" and op != "attention":  # (8, 1536, 2048, 16); (1, 2048, 24, 64, 128)
        args, _, _, make = kernel_bench.case(op, kernel_bench.SIZES["paper"][op][0], dtype, 64)
        return make, args, None
    if shape == "paper":  # bmojo case of the attention benchmark: length 4096, W 512, d 128
        length, window, head_dim = 4096, 512, 128
        q, k, v, extra = attention_bench.make_case("bmojo", length, window, head_dim,
                                                   attention_bench.SIZES["paper"], dtype)
        args, static, tans = dict(q=q, k=k, v=v, memory_chunk=window, **extra), {}, None
        static["window"] = window
    else:
        sizes = kernel_bench.SIZES["edges"]["bmojo_attention" if op == "attention" else op]
        inputs, options, static = EDGES[op]
        shape = sizes[1 if shape == "odd-state" else 0]
        args, tans = (inputs(shape, dtype, seed=seed, **options) for seed in (0, 1))
    names = [n for n, a in args.items()
             if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.inexact)]
    fixed = {n: a for n, a in args.items() if n not in names}
    function = getattr(ssm_kernels, "bmojo_attention" if op == "attention" else op)

    def make(implementation):
        return lambda *xs: function(**fixed, **dict(zip(names, xs)), **static,
                                    implementation=implementation)
    return (make, tuple(args[n] for n in names),
            None if tans is None else tuple(tans[n] for n in names))


def all_modes(fn, primals, tangents):
    """Forward, grad, jvp and grad-of-jvp of ``fn`` (jvp modes only with tangents), one jit."""
    argnums = tuple(range(len(primals)))

    def linear(outs):
        keys = jax.random.split(jax.random.key(7), len(outs))
        return sum(jnp.vdot(jax.random.normal(key, o.shape, jnp.float32), o.astype(jnp.float32))
                   for key, o in zip(keys, outs))

    def quadratic(outs):
        return linear(outs) + sum(0.5 * jnp.sum(o.astype(jnp.float32) ** 2) for o in outs)

    @jax.jit
    def run(primals, tangents):
        res = {"forward": fn(*primals),
               "grad": jax.grad(lambda *p: linear(fn(*p)), argnums)(*primals)}
        if tangents is not None:
            res["jvp"] = jax.jvp(fn, primals, tangents)[1]
            res["grad_of_jvp"] = jax.grad(lambda *p: quadratic(jax.jvp(fn, p, tangents)[1]),
                                          argnums)(*primals)
        return res

    return run(primals, tangents)


@functools.lru_cache(maxsize=None)
def reference(op: str, shape: str, dtype: str):
    """The "xla" form in every mode at float32 "highest" matmul precision, on the device."""
    make, primals, tangents = problem(op, shape, dtype)
    with jax.default_matmul_precision("highest"):
        return all_modes(make("xla"), primals, tangents)


def assert_close(got, want, tol, label):
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got) == len(want), f"{label}: {len(got)} outputs, expected {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert g.shape == w.shape, f"{label} output {i}: shape {g.shape} != {w.shape}"
        assert np.all(np.isfinite(g)), f"{label} output {i}: non-finite values"
        scale = np.max(np.abs(w))
        err = np.max(np.abs(g - w))
        assert err <= tol * scale, (
            f"{label} output {i} {g.shape}: max |pallas - xla| = {err:.3g} > {tol:g} x "
            f"max |xla| = {tol * scale:.3g}")


# Order matters under `pytest -x`: every op at the smallest shapes first, then precisions,
# then paper shapes; the non-power-of-two scan state last.
CASES = [(op, "edges", "float32", "highest") for op in ("selective_scan", "ssd", "attention")]
CASES += [(op, "edges", "float32", "default") for op in ("selective_scan", "ssd", "attention")]
CASES += [(op, "edges", "bfloat16", "default") for op in ("selective_scan", "ssd", "attention")]
CASES += [(op, "paper", dtype, "default") for dtype in ("bfloat16", "float32")
          for op in ("selective_scan", "ssd", "attention")]


def _check(op, shape, dtype, precision):
    make, primals, tangents = problem(op, shape, dtype)
    context = (jax.default_matmul_precision(precision) if precision != "default"
               else contextlib.nullcontext())
    with context:
        got = all_modes(make("pallas"), primals, tangents)
    want = reference(op, shape, dtype)
    forward_tol, derivative_tol = TOL["bfloat16" if dtype == "bfloat16" else precision]
    assert set(got) == set(want)
    for mode in want:
        tol = forward_tol if mode == "forward" else derivative_tol
        assert_close(got[mode], want[mode], tol, f"{op} {shape} {dtype} {precision} {mode}")


@on_gpu
@pytest.mark.parametrize("op,shape,dtype,precision", CASES, ids=["-".join(c) for c in CASES])
def test_pallas_matches_xla_on_device(op, shape, dtype, precision):
    _check(op, shape, dtype, precision)


@on_gpu
@pytest.mark.parametrize("name", bmojo.PRESETS)
def test_decode_matches_parallel_at_default_precision(name):
    """tests/test_bmojo_model.py's check, with the Pallas kernels (auto on GPU) and TF32 matmuls."""
    config, params, tokens, logits = model_tests._run.__wrapped__(name)[:4]
    stepped = model_tests._decode_fn(config)(params, tokens)
    scale = max(1.0, float(jnp.abs(logits).max()))
    assert float(jnp.abs(stepped - logits).max()) <= DECODE_TOL * scale


@on_gpu
def test_selective_scan_state_not_a_power_of_two():
    """State 5, padded to 8 on GPU (Triton takes power-of-two sizes only)."""
    _check("selective_scan", "odd-state", "float32", "highest")


# ------------------------------------------------------------------------ the script, on CPU


def test_gpu_check_fails_fast_without_gpu(tmp_path):
    """No nvidia-smi on PATH: exit 2 at once with one line, nothing written, nothing installed."""
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == gpu_check.NO_GPU_EXIT
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU here"), lines
    assert not (tmp_path / "out").exists()
    assert elapsed < 10, f"took {elapsed:.1f} s"


class _Parsed(Exception):
    """Raised by the patched parser once a benchmark's arguments are read: nothing runs after."""


def test_gpu_check_benchmark_steps_take_their_arguments(tmp_path, monkeypatch):
    """Every benchmark step of the GPU run passes options its benchmark accepts (a renamed option
    would otherwise be found only on the GPU machine, at the cost of its scarce time)."""
    import argparse
    import importlib

    original = argparse.ArgumentParser.parse_args

    def checked(parser, args=None, namespace=None):
        original(parser, args, namespace)  # exits with status 2 on an unknown or bad option
        raise _Parsed()

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", checked)
    benchmarks = [step for step in gpu_check.steps(tmp_path)
                  if step.command[1] == "-m" and step.command[2].startswith("benchmarks.")]
    assert {step.name for step in benchmarks} == {"ceilings", "kernels", "attention", "tangent"}
    for step in benchmarks:
        argv = list(step.command[3:]) + (["--time-cap", "60"] if step.capped else [])
        with pytest.raises(_Parsed):
            importlib.import_module(step.command[2]).main(argv)


def test_gpu_check_targets_read_the_ratios_the_right_way_round():
    """Hand-made result rows: each target's ratio and verdict, computed by hand."""
    results = {
        "ceilings": {"rows": [{"ceiling": "copy", "impl": "torch copy_", "GB/s": 4000.0},
                              {"ceiling": "matmul bf16", "impl": "jax", "TFLOP/s": 700.0}]},
        "kernels": {"rows": [
            {"op": "selective_scan", "dtype": "bfloat16", "form": "pallas", "mode": "fwd",
             "ms": 1.0, "GB/s": 2400.0},
            {"op": "selective_scan", "dtype": "bfloat16", "form": "associative", "mode": "fwd",
             "ms": 2.5},
            *({"op": "ssd", "dtype": "bfloat16", "shape": "(1, 4096, 24, 64, 128)", "form": form,
               "mode": "fwd+bwd", "ms": ms}
              for form, ms in (("pallas", 4.0), ("xla", 10.0), ("mamba2-triton", 2.0)))]},
        "attention": {"rows": [
            {"case": "swa", "window": 512, "length": length, "impl": impl, "mode": "fwd+bwd",
             "ms": ms}
            for length, impl, ms in ((4096, "kernel (pallas)", 1.0),
                                     (4096, "dot_product_attention (cudnn)", 0.95),
                                     (32768, "kernel (pallas)", 8.5),
                                     (32768, "dot_product_attention (cudnn)", 7.0))]},
    }
    got = {r["target"]: (r["measured"], r["met"]) for r in gpu_check.targets(results)}
    assert got["copy bandwidth GB/s (torch copy_)"] == (4000.0, "")
    assert got["selective scan fwd GB/s / copy GB/s"] == (0.6, "yes")
    assert got["selective scan fwd: associative time / pallas time"] == (2.5, "NO")
    assert got["ssd fwd+bwd L 4096: xla time / pallas time"] == (2.5, "yes")
    assert got["ssd fwd+bwd L 4096: pallas time / Mamba-2 Triton time"] == (2.0, "NO")
    cudnn = "attention fwd+bwd W 512 L {}: cuDNN time / kernel time"
    assert got[cudnn.format(4096)] == (0.95, "yes")
    assert got[cudnn.format(32768)] == (7.0 / 8.5, "NO")
    assert got["attention (swa) fwd+bwd W 512: time(L 32768) / time(L 4096)"] == (8.5, "yes")
    notes = {r["target"]: r["note"] for r in gpu_check.targets(results)}
    assert notes["bf16 matmul TFLOP/s (torch)"] == "not run"
    assert notes["attention (bmojo) fwd+bwd W 512: time(L 32768) / time(L 4096)"] == "not run"
