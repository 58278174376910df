"""The cost of in-storage memory: a B'MOJO layer with and without retrieval, against length.

Retrieval adds, per chunk, the scores of at most `storage_blocks` stored blocks and `topk * block`
attended tokens, so the layer must stay linear in length for fixed sizes. For each length the
table gives the forward and forward+backward time of one `bmojo.BMojoLayer` ("bmojo" block type,
XLA forms on CPU, kernels on GPU/TPU) with in-storage memory over the same layer without it, and
the time at each length over the time at the shortest (linear scaling: the length ratio).

    python -m benchmarks.storage                      # CPU-sized default
    python -m benchmarks.storage --sizes paper        # 2K..16K, width 512, window 512
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import bmojo
from benchmarks import common

SIZES = {
    "quick": {"lengths": (512, 1024, 2048), "batch": 1, "d_model": 64, "heads": 4, "window": 64,
              "slots": 16, "blocks": 32, "block": 16, "topk": 4},
    "paper": {"lengths": (2048, 4096, 8192, 16384), "batch": 1, "d_model": 512, "heads": 8, "window": 512,
              "slots": 64, "blocks": 256, "block": 64, "topk": 8},
}


def layer_times(config: bmojo.ModelConfig, length: int, batch: int) -> tuple[float, float]:
    """Median seconds of the forward and forward+backward pass of one B'MOJO layer."""
    layer = bmojo.BMojoLayer(config, "bmojo")
    x = jax.random.normal(jax.random.key(0), (batch, length, config.d_model), jnp.dtype(config.dtype))
    params = jax.jit(layer.init)(jax.random.key(1), x)
    forward = jax.jit(lambda p, x: layer.apply(p, x)[0])
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply(p, x)[0].astype(jnp.float32) ** 2)))
    return common.time_fn(forward, params, x), common.time_fn(grad, params, x)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", choices=tuple(SIZES), default="quick")
    common.add_output_args(parser)
    args = parser.parse_args(argv)
    s = SIZES[args.sizes]
    cap = common.TimeCap(args.time_cap)
    base = bmojo.ModelConfig(d_model=s["d_model"], n_heads=s["heads"], n_kv_heads=s["heads"] // 2,
                             window=s["window"], memory_slots=s["slots"], n_layers=1, block_types=("bmojo",),
                             max_len=max(s["lengths"]), ssm_kind="mamba2", d_ff=0)
    stored = bmojo.ModelConfig(**{**base.to_dict(), "storage_blocks": s["blocks"],
                                  "storage_block_size": s["block"], "storage_topk": s["topk"]})
    rows, skipped = [], []
    for length in s["lengths"]:
        if cap.expired():
            skipped.append(length)
            continue
        plain_f, plain_b = layer_times(base, length, s["batch"])
        store_f, store_b = layer_times(stored, length, s["batch"])
        rows.append({"length": length, "fwd_s": store_f, "fwd_bwd_s": store_b, "fwd_ratio": store_f / plain_f,
                     "fwd_bwd_ratio": store_b / plain_b})
    for row in rows:
        row["fwd_bwd_vs_shortest"] = row["fwd_bwd_s"] / rows[0]["fwd_bwd_s"]
    print(common.format_table(rows, ["length", "fwd_s", "fwd_bwd_s", "fwd_ratio", "fwd_bwd_ratio",
                                     "fwd_bwd_vs_shortest"]))
    path = common.write_results("storage", rows, args.out, sizes=s, skipped_lengths=skipped)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
