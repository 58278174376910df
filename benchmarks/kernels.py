"""Pallas kernels vs XLA forms and peers: forward and forward+backward of ``selective_scan`` and ``ssd``.

Prints a table of median times with achieved GB/s and TFLOP/s (and their fraction of the device's
HBM bandwidth and bf16 peak, when the device is known), and writes
``benchmarks/results/<device>-kernels.json`` (or into ``--out``). ``rel_err`` (forward rows): the
largest difference of the form's first output from the "xla" form's, over the largest magnitude
of the latter. On GPU, ssd also runs Mamba-2's Triton kernel (``benchmarks.peers.mamba_triton``,
its own chunk size, default 256) when its sources are there; a row records why when not.

    python -m benchmarks.kernels                 # small CPU-sized default ("xla" vs "interpret", float32)
    python -m benchmarks.kernels --sizes paper   # Mamba-130M-like and SSD paper sizes (GPU/TPU)
    python -m benchmarks.kernels --sizes targets --dtypes bfloat16 --time-cap 60   # issue 12 targets

Traffic and FLOP counts are the minimal model of each op (every input read once and every output
written once per pass; forward+backward = a forward, then a backward reading the inputs and the
output cotangents and writing the input cotangents), not measured counters:

- selective_scan, per (batch, dim, length, state) element: 7 FLOPs forward (dt*A, exp, two
  products and a sum for the state, a product and a sum for the output); forward+backward 3x.
- ssd (chunked algorithm, chunk Q): 2*batch*heads*length*(Q*(state + headdim) + 2*state*headdim)
  FLOPs forward (intra-chunk matmuls, chunk states, state-to-output); forward+backward 3x.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import ssm_kernels
from benchmarks import common
from benchmarks.peers import PeerUnavailable, mamba_triton

SIZES = {
    # selective_scan: (batch, dim, length, state); ssd: (batch, length, heads, headdim, state)
    "small": {"selective_scan": [(1, 32, 128, 8)], "ssd": [(1, 128, 2, 16, 16)]},
    "paper": {
        "selective_scan": [(8, 1536, 2048, 16)],
        "ssd": [(1, length, 24, 64, 128) for length in (2048, 4096, 8192, 16384)],
    },
    # the shapes of issue 12's targets (a subset of "paper")
    "targets": {"selective_scan": [(8, 1536, 2048, 16)],
                "ssd": [(1, length, 24, 64, 128) for length in (4096, 16384)]},
}
ACCELERATOR_FORMS = {"selective_scan": ("pallas", "xla", "associative"), "ssd": ("pallas", "xla")}
GPU_PEERS = {"selective_scan": (), "ssd": ("mamba2-triton",)}
CPU_FORMS = {"selective_scan": ("xla", "interpret"), "ssd": ("xla", "interpret")}
MODES = (("fwd", 1), ("fwd+bwd", 3))  # mode, multiple of the forward's traffic and FLOPs


def selective_scan_case(shape, dtype):
    batch, dim, length, state = shape
    k = jax.random.split(jax.random.key(0), 6)
    args = (jax.random.normal(k[0], (batch, dim, length), dtype),
            jax.random.normal(k[1], (batch, dim, length), dtype),
            -jnp.exp(jax.random.normal(k[2], (dim, state), jnp.float32)),
            jax.random.normal(k[3], (batch, state, length), dtype),
            jax.random.normal(k[4], (batch, state, length), dtype),
            jax.random.normal(k[5], (dim,), jnp.float32))
    item = jnp.dtype(dtype).itemsize
    traffic = (3 * batch * dim * length + 2 * batch * state * length) * item  # u, delta, B, C in; y out
    flops = 7 * batch * dim * length * state

    def fn(implementation):
        def run(u, delta, A, B, C, D):
            return ssm_kernels.selective_scan(u, delta, A, B, C, D, delta_softplus=True,
                                              return_last_state=True, implementation=implementation)
        return run

    return args, traffic, flops, fn


def ssd_case(shape, dtype, block_len):
    batch, length, heads, headdim, state = shape
    k = jax.random.split(jax.random.key(0), 4)
    args = (jax.random.normal(k[0], (batch, length, heads, headdim), dtype),
            -jax.nn.softplus(jax.random.normal(k[1], (batch, length, heads), jnp.float32)),
            jax.random.normal(k[2], (batch, length, heads, state), dtype),
            jax.random.normal(k[3], (batch, length, heads, state), dtype))
    item = jnp.dtype(dtype).itemsize
    traffic = (2 * batch * length * heads * headdim + 2 * batch * length * heads * state) * item \
        + 4 * batch * length * heads
    flops = 2 * batch * heads * length * (block_len * (state + headdim) + 2 * state * headdim)

    def fn(implementation):
        def run(X, A, B, C):
            return ssm_kernels.ssd(X, A, B, C, block_len=block_len, implementation=implementation)
        return run

    return args, traffic, flops, fn


def forward_backward(fn):
    """Gradient of a scalar of every output w.r.t. every input: one forward and one backward."""

    def loss(*args):
        return sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(fn(*args)))

    def run(*args):
        return jax.grad(loss, argnums=tuple(range(len(args))))(*args)
    return run


def runners(form, args, make, peer_chunk):
    """``{mode: (fn, args, sync)}`` for one of our implementations or a peer."""
    if form == "mamba2-triton":
        return mamba_triton.ssd_runners(*args, chunk_size=peer_chunk)
    sync = jax.block_until_ready
    return {"fwd": (jax.jit(make(form)), args, sync),
            "fwd+bwd": (jax.jit(forward_backward(make(form))), args, sync)}


def measure(op, shape, dtype, forms, repeats, block_len, cap, peer_chunk):
    if op == "selective_scan":
        args, traffic, flops, make = selective_scan_case(shape, dtype)
    else:
        args, traffic, flops, make = ssd_case(shape, dtype, block_len)
    hbm, tflops_peak = common.peak("hbm_gbps"), common.peak("bf16_tflops")
    try:
        reference = None if cap.expired() else common.first_output(jax.jit(make("xla"))(*args))
    except Exception as err:  # no rel_err then; the "xla" rows record the error
        print(f"{op} {shape}: the 'xla' reference failed: {type(err).__name__}: {err}")
        reference = None
    rows = []
    for form in forms:
        base = {"op": op, "shape": str(shape), "dtype": jnp.dtype(dtype).name, "form": form}
        if cap.expired():
            rows += [dict(base, mode=mode, skipped="time cap") for mode, _ in MODES]
            continue
        try:
            form_runners = runners(form, args, make, peer_chunk)
        except PeerUnavailable as err:
            rows += [dict(base, mode=mode, error=str(err)) for mode, _ in MODES]
            continue
        for mode, mult in MODES:
            row = dict(base, mode=mode)
            rows.append(row)
            if cap.expired():
                row["skipped"] = "time cap"
                continue
            fn, inputs, sync = form_runners[mode]
            try:
                seconds = common.time_fn(fn, *inputs, repeats=repeats, sync=sync)
                if mode == "fwd" and reference is not None:
                    row["rel_err"] = common.rel_err(common.first_output(fn(*inputs)), reference)
            except Exception as err:  # e.g. a compile failure: record it, keep going
                row["error"] = f"{type(err).__name__}: {str(err)[:200]}"
                continue
            gbps = mult * traffic / seconds / 1e9
            tfl = mult * flops / seconds / 1e12
            row.update({"ms": 1e3 * seconds, "GB/s": gbps,
                        "hbm_frac": gbps / hbm if hbm else None, "TFLOP/s": tfl,
                        "bf16_peak_frac": tfl / tflops_peak if tflops_peak else None})
    base = {r["mode"]: r["ms"] for r in rows if r["form"] == "xla" and "ms" in r}
    for r in rows:
        r["speedup_vs_xla"] = base[r["mode"]] / r["ms"] if r["mode"] in base and "ms" in r else None
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), default="small",
                        help="'small' runs on a CPU in seconds; 'paper' and 'targets' are for GPU/TPU")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated, from float32,bfloat16 (default: float32 for "
                             "'small', both otherwise)")
    parser.add_argument("--ops", default="selective_scan,ssd", help="comma-separated ops")
    parser.add_argument("--forms", default=None,
                        help="comma-separated implementations (default: pallas and the XLA forms "
                             "on GPU/TPU, plus the peers on GPU; xla and interpret on CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--block-len", type=int, default=64, help="ssd chunk length")
    parser.add_argument("--peer-chunk", type=int, default=mamba_triton.DEFAULT_CHUNK,
                        help="chunk size of Mamba-2's Triton kernel (its default: 256)")
    common.add_output_args(parser)
    args = parser.parse_args(argv)

    backend = jax.default_backend()
    dtypes = args.dtypes or ("float32" if args.sizes == "small" else "float32,bfloat16")
    cap = common.TimeCap(args.time_cap)
    rows = []
    for op in args.ops.split(","):
        forms = (args.forms.split(",") if args.forms
                 else ACCELERATOR_FORMS[op] + GPU_PEERS[op] * (backend == "gpu")
                 if backend in ("gpu", "tpu") else CPU_FORMS[op])
        for dtype in dtypes.split(","):
            for shape in SIZES[args.sizes][op]:
                rows += measure(op, shape, jnp.dtype(dtype), forms, args.repeats, args.block_len,
                                cap, args.peer_chunk)

    columns = ["op", "shape", "dtype", "form", "mode", "ms", "speedup_vs_xla", "GB/s", "hbm_frac",
               "TFLOP/s", "bf16_peak_frac", "rel_err", "error", "skipped"]
    print(f"{common.device_info()['device_kind']}, jax {jax.__version__}; "
          "GB/s and TFLOP/s from the minimal traffic/FLOP model in the module docstring")
    print(common.format_table(rows, columns))
    path = common.write_results("kernels", rows, out_dir=args.out, sizes=args.sizes,
                                shapes=SIZES[args.sizes], block_len=args.block_len,
                                peer_chunk=args.peer_chunk, time_cap_s=args.time_cap)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
