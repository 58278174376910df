"""B'MOJO attention: the Pallas kernel against jax.nn.dot_product_attention, PyTorch and the XLA forms.

Two cases, forward and forward+backward, bf16 on accelerators:
  swa:   plain causal sliding-window attention (in-context source only), our kernel vs
         jax.nn.dot_product_attention(local_window_size=(W - 1, 0)) with implementation="xla"
         and, on GPU, "cudnn", and PyTorch's scaled_dot_product_attention with a sliding-window
         mask (``benchmarks.peers.torch_attention``);
  bmojo: in-context + fading window + eidetic slots (per-chunk snapshots), our kernel vs the
         blocked XLA form (implementation="xla").
TFLOP/s count only the unmasked work: 4 * head_dim FLOPs per (query, visible key) pair forward,
3.5x that for forward+backward. The table also gives, per (case, W, head_dim, impl), the time at
the longest length over the time at the shortest (linear scaling: ratio ~ length ratio), and for
forward rows ``rel_err``: the largest difference from our kernel's output over its largest
magnitude. On CPU the kernel runs in interpret mode: its times there measure nothing but
correctness of the script; quote GPU/TPU figures only.

    python -m benchmarks.attention                   # quick CPU-sized default (< 1 minute)
    python -m benchmarks.attention --sizes paper     # lengths 4K..32K, W 512..2048, d 64/128
    python -m benchmarks.attention --sizes targets --time-cap 80   # issue 12's target shapes
"""

from __future__ import annotations

import argparse
import itertools

import jax
import jax.numpy as jnp
import numpy as np

import ssm_kernels
from benchmarks import common
from benchmarks.peers import PeerUnavailable, torch_attention

# peers: of the swa case, from "xla" and "cudnn" (jax.nn.dot_product_attention) and "torch"
# (the GPU-only ones are left out elsewhere). The quadratic "xla" peer is left out of "targets":
# at 32K its scores alone take 64 GiB.
SIZES = {
    "quick": {"lengths": (256, 512), "windows": (32,), "head_dims": (32,), "batch": 1,
              "heads": 2, "kv_heads": 2, "slots": 16, "dtype": "float32", "peers": ("xla",)},
    "paper": {"lengths": (4096, 8192, 16384, 32768), "windows": (512, 1024, 2048),
              "head_dims": (64, 128), "batch": 1, "heads": 16, "kv_heads": 16, "slots": 64,
              "dtype": "bfloat16", "peers": ("xla", "cudnn", "torch")},
    "targets": {"lengths": (4096, 32768), "windows": (512, 2048), "head_dims": (128,), "batch": 1,
                "heads": 16, "kv_heads": 16, "slots": 64, "dtype": "bfloat16",
                "peers": ("cudnn", "torch")},
}
GPU_ONLY_PEERS = ("cudnn", "torch")


def visible_pairs(length: int, window: int, fading: bool, memory_pos=None, chunk=None) -> int:
    """Number of (query, visible key) pairs of one head (the unmasked work)."""
    i = np.arange(length)
    pairs = np.minimum(i + 1, window).sum()
    if fading:
        pairs += np.clip(i - window + 1, 0, window).sum()
    if memory_pos is not None:
        horizon = 2 * window if fading else window
        pos = np.asarray(memory_pos[0])[i // chunk]  # (length, slots), batch element 0
        pairs += ((pos >= 0) & (pos <= (i - horizon)[:, None])).sum()
    return int(pairs)


def make_case(case, length, window, head_dim, cfg, dtype):
    keys = jax.random.split(jax.random.key(length * 7 + window + head_dim), 8)
    b, h, kvh = cfg["batch"], cfg["heads"], cfg["kv_heads"]

    def normal(key, *shape):
        return jax.random.normal(key, shape, dtype)

    q = normal(keys[0], b, length, h, head_dim)
    k = normal(keys[1], b, length, kvh, head_dim)
    v = normal(keys[2], b, length, kvh, head_dim)
    extra = {}
    if case == "bmojo":
        chunks = -(-length // window)
        slots = cfg["slots"]
        # slot s of snapshot c holds a token from before chunk c (a causal selection)
        pos = jax.random.randint(keys[3], (b, chunks, slots), 0, length)
        pos = jnp.where(pos < jnp.arange(chunks)[None, :, None] * window, pos, -1)
        extra = dict(fading_k=normal(keys[4], b, length, kvh, head_dim),
                     fading_v=normal(keys[5], b, length, kvh, head_dim),
                     memory_k=normal(keys[6], b, chunks, slots, kvh, head_dim),
                     memory_v=normal(keys[7], b, chunks, slots, kvh, head_dim),
                     memory_pos=pos.astype(jnp.int32))
    return q, k, v, extra


def implementations(case, window, peers):
    """name -> f(q, k, v, extra) -> out (JAX), or -> "torch" for PyTorch's peer."""
    ours = "pallas" if jax.default_backend() in ("gpu", "tpu") else "interpret"
    chunk = {"memory_chunk": window} if case == "bmojo" else {}  # snapshots every W tokens
    impls = {f"kernel ({ours})": lambda q, k, v, extra: ssm_kernels.bmojo_attention(
        q, k, v, window=window, implementation=ours, **extra, **chunk)[0]}
    if case == "swa":
        for backend in (p for p in peers if p != "torch"):
            impls[f"dot_product_attention ({backend})"] = (
                lambda q, k, v, extra, backend=backend: jax.nn.dot_product_attention(
                    q, k, v, is_causal=True, local_window_size=(window - 1, 0),
                    implementation=backend))
        if "torch" in peers:
            impls["torch sdpa (masked)"] = "torch"
    else:
        impls["bmojo_attention (xla)"] = lambda q, k, v, extra: ssm_kernels.bmojo_attention(
            q, k, v, window=window, implementation="xla", **extra, **chunk)[0]
    return impls


def runners(impl, window, q, k, v, extra):
    """``{mode: (fn, args, sync)}`` of one implementation (JAX, or PyTorch's peer)."""
    if impl == "torch":
        return torch_attention.sliding_window_runners(q, k, v, window)
    sync = jax.block_until_ready
    return {"fwd": (jax.jit(impl), (q, k, v, extra), sync),
            "fwd+bwd": (jax.jit(forward_backward(impl)), (q, k, v, extra), sync)}


def forward_backward(fn):
    """Forward and backward (gradients of q, k, v for a fixed output cotangent)."""
    def loss(q, k, v, extra):
        out = fn(q, k, v, extra)
        return jnp.sum(out.astype(jnp.float32) * 1e-3)
    return jax.grad(loss, argnums=(0, 1, 2))


def run(sizes: str, repeats: int, cap: common.TimeCap):
    cfg = SIZES[sizes]
    dtype = jnp.dtype(cfg["dtype"])
    on_gpu = jax.default_backend() == "gpu"
    peers = tuple(p for p in cfg["peers"] if on_gpu or p not in GPU_ONLY_PEERS)
    rows = []
    for case, window, head_dim, length in itertools.product(
            ("swa", "bmojo"), cfg["windows"], cfg["head_dims"], cfg["lengths"]):
        if window >= length:
            continue
        keys = {"case": case, "length": length, "window": window, "head_dim": head_dim}
        impls = implementations(case, window, peers)
        if cap.expired():
            rows += [dict(keys, impl=name, mode=mode, skipped="time cap")
                     for name in impls for mode in ("fwd", "fwd+bwd")]
            continue
        q, k, v, extra = make_case(case, length, window, head_dim, cfg, dtype)
        pairs = visible_pairs(length, window, case == "bmojo", extra.get("memory_pos"), window)
        flops = 4.0 * head_dim * pairs * cfg["batch"] * cfg["heads"]
        reference = None  # our kernel's forward output
        for name, impl in impls.items():
            try:
                modes = runners(impl, window, q, k, v, extra)
            except PeerUnavailable as err:
                rows += [dict(keys, impl=name, mode=mode, error=str(err))
                         for mode in ("fwd", "fwd+bwd")]
                continue
            for mode, work in (("fwd", flops), ("fwd+bwd", 3.5 * flops)):
                row = dict(keys, impl=name, mode=mode)
                rows.append(row)
                if cap.expired():
                    row["skipped"] = "time cap"
                    continue
                fn, args, sync = modes[mode]
                try:
                    seconds = common.time_fn(fn, *args, repeats=repeats, sync=sync)
                    if mode == "fwd":
                        out = common.first_output(fn(*args))
                        reference = out if reference is None else reference
                        row["rel_err"] = common.rel_err(out, reference)
                except Exception as err:  # e.g. cuDNN rejects a shape: record, keep going
                    row["error"] = f"{type(err).__name__}: {str(err)[:120]}"
                    continue
                row.update(ms=seconds * 1e3, tflops=work / seconds / 1e12)
    _add_ratios(rows, cfg["lengths"])
    return rows, cfg, dtype


def _add_ratios(rows, lengths):
    """speedup of our kernel over each row; time at the longest length / at the shortest."""
    index = {(r["case"], r["length"], r["window"], r["head_dim"], r["impl"], r["mode"]): r
             for r in rows if "ms" in r}
    for r in rows:
        if "ms" not in r:
            continue
        ours = next((o for key, o in index.items() if key[:4] == (r["case"], r["length"],
                     r["window"], r["head_dim"]) and key[4].startswith("kernel")
                     and key[5] == r["mode"]), None)
        if ours is not None:
            r["kernel_speedup"] = r["ms"] / ours["ms"]
        if r["length"] == max(lengths):
            first = index.get((r["case"], min(lengths), r["window"], r["head_dim"], r["impl"],
                               r["mode"]))
            if first is not None:
                r["time_ratio_longest_over_shortest"] = r["ms"] / first["ms"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", choices=sorted(SIZES), default="quick",
                        help="quick: CPU-sized smoke run (default); paper: 4K..32K, W 512..2048; "
                             "targets: the shapes of issue 12's targets")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per entry (default: 3 quick, 10 otherwise)")
    common.add_output_args(parser)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.sizes == "quick" else 10)
    rows, cfg, dtype = run(args.sizes, repeats, common.TimeCap(args.time_cap))
    columns = ["case", "length", "window", "head_dim", "impl", "mode", "ms", "tflops",
               "kernel_speedup", "time_ratio_longest_over_shortest", "rel_err", "error", "skipped"]
    print(common.format_table(rows, columns))
    path = common.write_results(
        "attention", rows, out_dir=args.out, sizes=args.sizes, dtype=str(dtype),
        shapes={k: v for k, v in cfg.items() if k not in ("dtype", "peers")}, peers=cfg["peers"],
        flops="4*head_dim per visible (query, key) pair per head; fwd+bwd = 3.5x fwd",
        time_cap_s=args.time_cap)
    print(f"\nwrote {path}")
    print("kernel_speedup = time of the row / time of our kernel (> 1: the kernel is faster)")


if __name__ == "__main__":
    main()
