"""Inputs of the three ops at named sizes (shared with the tests), and a benchmark of every
implementation of ``selective_scan`` and ``ssd``, forward and forward+backward.

Prints a table of median times with achieved GB/s and TFLOP/s (and their fraction of the device's
HBM bandwidth and bf16 peak, when the device is known), each form's speed-up over the "xla" and
the "reference" forms, and writes ``benchmarks/results/<device>-kernels.json`` (or into
``--out``). ``rel_err`` (forward rows): the largest difference of the form's first output from
the "xla" form's, over the largest magnitude of the latter. On GPU, ssd also runs Mamba-2's
Triton kernel (``benchmarks.peers.mamba_triton``, its own chunk size, default 256) when its
sources are there; a row records why when not.

    python -m benchmarks.kernels                 # CPU-sized default (reference, xla forms, interpret)
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
import numpy as np

import ssm_kernels
from benchmarks import common
from benchmarks.peers import PeerUnavailable, mamba_triton

SIZES = {
    # selective_scan: (batch, dim, length, state); ssd: (batch, length, heads, headdim, state);
    # bmojo_attention: (batch, length, heads, kv_heads, head_dim) (timed by benchmarks.attention)
    "tiny": {"selective_scan": [(2, 12, 11, 3)], "ssd": [(2, 10, 4, 3, 5)],
             "bmojo_attention": [(2, 13, 4, 2, 8)]},  # the CPU tests' shapes: padding everywhere
    "small": {"selective_scan": [(1, 32, 128, 8), (2, 64, 1024, 16)],
              "ssd": [(1, 128, 2, 16, 16), (2, 1024, 4, 32, 32)]},
    # the GPU tests' shapes: padded chunks, channel tiles and (on Triton) tiles of every size
    "edges": {"selective_scan": [(2, 80, 100, 16), (2, 80, 100, 5)], "ssd": [(2, 100, 4, 24, 20)],
              "bmojo_attention": [(2, 100, 4, 2, 24)]},
    "paper": {"selective_scan": [(8, 1536, 2048, 16)],
              "ssd": [(1, length, 24, 64, 128) for length in (2048, 4096, 8192, 16384)]},
    # the shapes of issue 12's targets (a subset of "paper")
    "targets": {"selective_scan": [(8, 1536, 2048, 16)],
                "ssd": [(1, length, 24, 64, 128) for length in (4096, 16384)]},
}
ACCELERATOR_FORMS = {"selective_scan": ("pallas", "xla", "associative"), "ssd": ("pallas", "xla")}
GPU_PEERS = {"selective_scan": (), "ssd": ("mamba2-triton",)}
CPU_FORMS = {"selective_scan": ("reference", "xla", "associative", "interpret"),
             "ssd": ("reference", "xla", "interpret")}
MODES = (("fwd", 1), ("fwd+bwd", 3))  # mode, multiple of the forward's traffic and FLOPs


def _float_type(dtype):
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def selective_scan_inputs(shape, dtype=jnp.float32, *, seed=0, groups_b=None, groups_c=None,
                          options=True) -> dict:
    """Keyword arrays of ``selective_scan`` for (batch, dim, length, state): u, delta, B, C (and
    z) in ``dtype``; A = -exp(N/2) and, with ``options``, D, delta_bias and initial_state in
    float32 (float64 for float64); B, C grouped (batch, groups, state, length) if given."""
    batch, dim, length, state = shape
    rng = np.random.default_rng(seed)
    normal = lambda *s: rng.standard_normal(s)  # noqa: E731
    bc = lambda g: (batch, state, length) if g is None else (batch, g, state, length)  # noqa: E731
    args = {"u": normal(batch, dim, length).astype(dtype),
            "delta": (0.5 * normal(batch, dim, length)).astype(dtype),
            "A": -np.exp(0.5 * normal(dim, state)),
            "B": normal(*bc(groups_b)).astype(dtype), "C": normal(*bc(groups_c)).astype(dtype)}
    if options:
        args.update(D=normal(dim), z=normal(batch, dim, length).astype(dtype),
                    delta_bias=0.3 * normal(dim), initial_state=normal(batch, dim, state))
    return {k: jnp.asarray(v, dtype if v.dtype == dtype else _float_type(dtype))
            for k, v in args.items()}


def ssd_inputs(shape, dtype=jnp.float32, *, seed=0, groups=None, init=True) -> dict:
    """Keyword arrays of ``ssd`` for (batch, length, heads, headdim, state): X, B, C (``groups``
    groups, default one per head) and initial_state in ``dtype``, A = -softplus(N) in float32
    (float64 for float64)."""
    batch, length, heads, headdim, state = shape
    rng = np.random.default_rng(seed)
    groups = groups or heads
    X = rng.standard_normal((batch, length, heads, headdim))
    A = -np.log1p(np.exp(rng.standard_normal((batch, length, heads))))
    B = rng.standard_normal((batch, length, groups, state))
    C = rng.standard_normal((batch, length, groups, state))
    h0 = rng.standard_normal((batch, heads, headdim, state)) if init else None
    cast = lambda t, d=dtype: None if t is None else jnp.asarray(t.astype(np.float32)).astype(d)  # noqa: E731
    return dict(X=cast(X), A=cast(A, _float_type(dtype)), B=cast(B), C=cast(C),
                initial_state=cast(h0))


def attention_inputs(shape, dtype=jnp.float32, *, seed=0, fading=True, memory=None, slots=5,
                     chunk=6) -> dict:
    """Keyword arrays of ``bmojo_attention`` for (batch, length, heads, kv_heads, head_dim), in
    ``dtype``. ``memory``: None, "shared" or "chunked" (snapshots every ``chunk`` queries);
    slot positions are uniform in [-1, length): empty, visible and hidden slots."""
    batch, length, heads, kv_heads, head_dim = shape
    rng = np.random.default_rng(seed)
    normal = lambda *s: jnp.asarray(rng.standard_normal(s), dtype)  # noqa: E731
    args = {"q": normal(batch, length, heads, head_dim),
            "k": normal(batch, length, kv_heads, head_dim),
            "v": normal(batch, length, kv_heads, head_dim)}
    if fading:
        args["fading_k"] = normal(batch, length, kv_heads, head_dim)
        args["fading_v"] = normal(batch, length, kv_heads, head_dim)
    if memory is not None:
        lead = (batch,) if memory == "shared" else (batch, -(-length // chunk))
        args["memory_k"] = normal(*lead, slots, kv_heads, head_dim)
        args["memory_v"] = normal(*lead, slots, kv_heads, head_dim)
        args["memory_pos"] = jnp.asarray(rng.integers(-1, length, (*lead, slots)), jnp.int32)
        if memory == "chunked":
            args["memory_chunk"] = chunk
    return args


def case(op, shape, dtype, chunk_size):
    """(positional arrays, bytes moved, FLOPs, implementation -> function) of one benchmark entry."""
    item = jnp.dtype(dtype).itemsize
    if op == "selective_scan":
        batch, dim, length, state = shape
        a = selective_scan_inputs(shape, dtype)
        args = (a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"])
        traffic = (3 * batch * dim * length + 2 * batch * state * length) * item  # u, delta, B, C; y
        flops = 7 * batch * dim * length * state

        def make(implementation):
            return lambda u, delta, A, B, C, D: ssm_kernels.selective_scan(
                u, delta, A, B, C, D, delta_softplus=True, implementation=implementation)
    else:
        batch, length, heads, headdim, state = shape
        a = ssd_inputs(shape, dtype, init=False)
        args = (a["X"], a["A"], a["B"], a["C"])
        traffic = 2 * batch * length * heads * (headdim + state) * item + 4 * batch * length * heads
        flops = 2 * batch * heads * length * (chunk_size * (state + headdim) + 2 * state * headdim)

        def make(implementation):
            return lambda X, A, B, C: ssm_kernels.ssd(X, A, B, C, chunk_size=chunk_size,
                                                      implementation=implementation)
    return args, traffic, flops, make


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


def measure(op, shape, dtype, forms, repeats, chunk_size, cap, peer_chunk):
    args, traffic, flops, make = case(op, shape, dtype, chunk_size)
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
    for name in ("xla", "reference"):
        base = {r["mode"]: r["ms"] for r in rows if r["form"] == name and "ms" in r}
        for r in rows:
            r[f"speedup_vs_{name}"] = (base[r["mode"]] / r["ms"] if r["mode"] in base and "ms" in r
                                       else None)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), default="small",
                        help="'tiny' and 'small' run on a CPU in seconds; 'paper' and 'targets' "
                             "are for GPU/TPU")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated, from float32,bfloat16 (default: float32 for "
                             "'tiny' and 'small', both otherwise)")
    parser.add_argument("--ops", default="selective_scan,ssd", help="comma-separated ops")
    parser.add_argument("--forms", default=None,
                        help="comma-separated implementations (default: pallas and the XLA forms "
                             "on GPU/TPU, plus the peers on GPU; the reference, the XLA forms and "
                             "interpret on CPU)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--chunk-size", type=int, default=64, help="ssd chunk length")
    parser.add_argument("--peer-chunk", type=int, default=mamba_triton.DEFAULT_CHUNK,
                        help="chunk size of Mamba-2's Triton kernel (its default: 256)")
    common.add_output_args(parser)
    args = parser.parse_args(argv)

    backend = jax.default_backend()
    cpu_sized = args.sizes in ("tiny", "small")
    dtypes = args.dtypes or ("float32" if cpu_sized else "float32,bfloat16")
    cap = common.TimeCap(args.time_cap)
    rows = []
    for op in args.ops.split(","):
        forms = (args.forms.split(",") if args.forms
                 else ACCELERATOR_FORMS[op] + GPU_PEERS[op] * (backend == "gpu")
                 if backend in ("gpu", "tpu") else CPU_FORMS[op])
        for dtype in dtypes.split(","):
            for shape in SIZES[args.sizes][op]:
                rows += measure(op, shape, jnp.dtype(dtype), forms, args.repeats,
                                args.chunk_size, cap, args.peer_chunk)

    columns = ["op", "shape", "dtype", "form", "mode", "ms", "speedup_vs_xla",
               "speedup_vs_reference", "GB/s", "hbm_frac", "TFLOP/s", "bf16_peak_frac",
               "rel_err", "error", "skipped"]
    print(f"{common.device_info()['device_kind']}, jax {jax.__version__}; "
          "GB/s and TFLOP/s from the minimal traffic/FLOP model in the module docstring")
    print(common.format_table(rows, columns))
    path = common.write_results("kernels", rows, out_dir=args.out, sizes=args.sizes,
                                shapes={op: SIZES[args.sizes][op] for op in args.ops.split(",")},
                                chunk_size=args.chunk_size, peer_chunk=args.peer_chunk,
                                time_cap_s=args.time_cap)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
