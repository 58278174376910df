"""Sequential vs associative vs chunked XLA forms of ``selective_scan`` and ``ssd``.

Times the forward pass of each form at a few sizes on the current device, prints a table with
each form's time relative to the sequential ``lax.scan`` reference, and writes
``benchmarks/results/<device>-scan.json``.

    python -m benchmarks.scan            # small CPU-sized default
    python -m benchmarks.scan --sizes paper
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

import ssm_kernels
from benchmarks import common

# (batch, dim, length, state) for selective_scan; (batch, length, heads, headdim, state) for ssd.
SIZES = {
    "small": {
        "selective_scan": [(2, 64, 256, 16), (2, 64, 1024, 16)],
        "ssd": [(2, 256, 4, 32, 32), (2, 1024, 4, 32, 32)],
    },
    "paper": {
        "selective_scan": [(8, 1536, 2048, 16), (1, 1536, 8192, 16)],
        "ssd": [(1, 2048, 24, 64, 128), (1, 8192, 24, 64, 128)],
    },
}
SCAN_FORMS = ("sequential", "associative", "xla")
SSD_FORMS = ("sequential", "xla")


def selective_scan_inputs(key, batch, dim, length, state, dtype):
    k = jax.random.split(key, 5)
    u = jax.random.normal(k[0], (batch, dim, length), dtype)
    delta = jax.random.normal(k[1], (batch, dim, length), dtype)
    A = -jnp.exp(jax.random.normal(k[2], (dim, state), jnp.float32))
    B = jax.random.normal(k[3], (batch, state, length), dtype)
    C = jax.random.normal(k[4], (batch, state, length), dtype)
    return u, delta, A, B, C


def ssd_inputs(key, batch, length, heads, headdim, state, dtype):
    k = jax.random.split(key, 4)
    X = jax.random.normal(k[0], (batch, length, heads, headdim), dtype)
    A = -jax.nn.softplus(jax.random.normal(k[1], (batch, length, heads), jnp.float32))
    B = jax.random.normal(k[2], (batch, length, heads, state), dtype)
    C = jax.random.normal(k[3], (batch, length, heads, state), dtype)
    return X, A, B, C


def bench_selective_scan(shape, dtype, repeats):
    args = selective_scan_inputs(jax.random.key(0), *shape, dtype)
    times = {}
    for form in SCAN_FORMS:
        fn = jax.jit(functools.partial(
            ssm_kernels.selective_scan, delta_softplus=True, implementation=form))
        times[form] = common.time_fn(fn, *args, repeats=repeats)
    return dict(zip(("batch", "dim", "length", "state"), shape)), times


def bench_ssd(shape, dtype, repeats, block_len):
    args = ssd_inputs(jax.random.key(0), *shape, dtype)
    times = {}
    for form in SSD_FORMS:
        fn = jax.jit(functools.partial(ssm_kernels.ssd, block_len=block_len, implementation=form))
        times[form] = common.time_fn(fn, *args, repeats=repeats)
    return dict(zip(("batch", "length", "heads", "headdim", "state"), shape)), times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), default="small",
                        help="size set: 'small' runs on a CPU in about a minute, 'paper' is for GPU/TPU")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--block-len", type=int, default=64, help="ssd chunk length")
    args = parser.parse_args(argv)
    dtype = jnp.dtype(args.dtype)

    rows = []
    for shape in SIZES[args.sizes]["selective_scan"]:
        dims, times = bench_selective_scan(shape, dtype, args.repeats)
        rows.append({"op": "selective_scan", "shape": str(shape), **dims,
                     **{f"{f}_ms": 1e3 * t for f, t in times.items()},
                     **{f"speedup_{f}": times["sequential"] / times[f] for f in SCAN_FORMS[1:]}})
    for shape in SIZES[args.sizes]["ssd"]:
        dims, times = bench_ssd(shape, dtype, args.repeats, args.block_len)
        rows.append({"op": "ssd", "shape": str(shape), **dims,
                     **{f"{f}_ms": 1e3 * t for f, t in times.items()},
                     "speedup_xla": times["sequential"] / times["xla"]})

    columns = ["op", "shape", "sequential_ms", "associative_ms", "xla_ms",
               "speedup_associative", "speedup_xla"]
    print(f"forward time on {common.device_info()['device_kind']}, {args.dtype}; "
          "speedup = sequential time / form time (same run)")
    print(common.format_table(rows, columns))
    path = common.write_results("scan", rows, dtype=args.dtype, sizes=args.sizes,
                                block_len=args.block_len)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
