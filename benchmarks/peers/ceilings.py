"""Ceilings measured in the same run: device-to-device copy bandwidth and a large bf16 matmul.

Rows (each optional: a row that cannot run records why):
  copy    torch ``dst.copy_(src)`` and jax ``2 * x`` (a jitted identity may be forwarded without
          a copy; a scale moves the same bytes); GB/s count bytes read plus bytes written.
  matmul  an (n, n) @ (n, n) bf16 product, float32 accumulation, in jax and torch; 2 n^3 FLOPs.

    python -m benchmarks.peers.ceilings                 # sizes for the device (small on CPU)
    python -m benchmarks.peers.ceilings --out DIR --time-cap 30
"""

from __future__ import annotations

import argparse
import importlib.util

import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks.peers import PeerUnavailable

TORCH_ROWS = (("copy", "torch copy_"), ("matmul bf16", "torch"))


def jax_runners(copy_bytes: int, n: int) -> dict:
    """``{(ceiling, impl): (fn, args, sync)}`` for jax."""
    x = jnp.ones((copy_bytes // 4,), jnp.float32)
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    sync = jax.block_until_ready
    return {("copy", "jax 2*x"): (jax.jit(lambda x: 2 * x), (x,), sync),
            ("matmul bf16", "jax"): (jax.jit(jnp.matmul), (a, b), sync)}


def torch_runners(copy_bytes: int, n: int) -> dict:
    """``{(ceiling, impl): (fn, args, sync)}`` for torch on the GPU, or ``PeerUnavailable``."""
    if importlib.util.find_spec("torch") is None:
        raise PeerUnavailable("PyTorch is not installed")
    import torch

    if not torch.cuda.is_available():
        raise PeerUnavailable("torch sees no CUDA device")
    src = torch.ones(copy_bytes // 4, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))

    def sync(_):
        torch.cuda.synchronize()

    return {("copy", "torch copy_"): (lambda d, s: d.copy_(s), (dst, src), sync),
            ("matmul bf16", "torch"): (torch.mm, (a, b), sync)}


def run(copy_bytes: int, n: int, repeats: int, cap: common.TimeCap) -> list[dict]:
    runners = jax_runners(copy_bytes, n)
    try:
        runners.update(torch_runners(copy_bytes, n))
    except PeerUnavailable as err:
        runners.update({key: str(err) for key in TORCH_ROWS})
    rows = []
    for (ceiling, impl), runner in runners.items():
        row = {"ceiling": ceiling, "impl": impl}
        if isinstance(runner, str):
            row["error"] = runner
        elif cap.expired():
            row["skipped"] = "time cap"
        else:
            fn, args, sync = runner
            seconds = common.time_fn(fn, *args, repeats=repeats, sync=sync)
            row["ms"] = 1e3 * seconds
            if ceiling == "copy":
                row.update(bytes=2 * copy_bytes, **{"GB/s": 2 * copy_bytes / seconds / 1e9})
            else:
                row.update(n=n, **{"TFLOP/s": 2 * n ** 3 / seconds / 1e12})
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copy-mib", type=int, default=None,
                        help="MiB copied (default: 4096 on GPU/TPU, 64 on CPU)")
    parser.add_argument("--matmul-n", type=int, default=None,
                        help="matmul size n (default: 8192 on GPU/TPU, 512 on CPU)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls (median)")
    common.add_output_args(parser)
    args = parser.parse_args(argv)
    for name in ("copy_mib", "matmul_n", "repeats"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer; got {value}")
    big = jax.default_backend() in ("gpu", "tpu")
    copy_mib = args.copy_mib or (4096 if big else 64)
    n = args.matmul_n or (8192 if big else 512)
    rows = run(copy_mib * 2 ** 20, n, args.repeats, common.TimeCap(args.time_cap))
    print(common.format_table(rows, ["ceiling", "impl", "ms", "GB/s", "TFLOP/s", "error",
                                     "skipped"]))
    path = common.write_results("ceilings", rows, out_dir=args.out, module="benchmarks.peers.ceilings",
                                shapes={"copy": [copy_mib * 2 ** 18], "matmul": [n, n, n]},
                                dtypes={"copy": "float32", "matmul": "bfloat16"},
                                time_cap_s=args.time_cap)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
