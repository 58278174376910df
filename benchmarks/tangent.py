"""Cost of tangent (linearized) ViTs relative to the plain network.

For a 12-block ViT, times the forward pass and an Adam training step of the plain network
and of its tangent model ``f(x; w0) + J(x) d`` with the last k blocks and the head
linearized (TAFT-k, k = 1, 4, 12), and with every parameter linearized (the generic JVP
approach). TAFT-k training is also timed with the frozen features before block 12 - k
cached (``model.apply_features``). ``*_x`` columns are ratios to the plain network (time,
or FLOPs of the lowered HLO for ``*_flops_x``: the figures to trust on a busy CPU). Prints a
table and writes ``benchmarks/results/<device>-tangent.json`` (or into ``--out``); with
``--time-cap``, models not started in time are listed as skipped.

    python -m benchmarks.tangent                       # tiny ViT, CPU-sized (default)
    python -m benchmarks.tangent --preset B/16 --batch 32 --dtype bfloat16   # paper size
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tangent
from benchmarks import common
from experiments.backbones import ViT, ViTConfig


def compile_with_flops(fn, *args):
    """``(compiled fn, FLOPs of its lowered HLO)``: one trace serves both."""
    lowered = jax.jit(fn).lower(*args)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return lowered.compile(), float((cost or {}).get("flops", float("nan")))


def train_step(loss_of, optimizer):
    """An Adam step ``(w, opt_state, *batch) -> (w, opt_state, loss)`` for ``loss_of(w, *batch)``."""

    def step(w, opt_state, *batch):
        loss, grads = jax.value_and_grad(loss_of)(w, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, w)
        return optax.apply_updates(w, updates), opt_state, loss

    return step


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    """``(median seconds, lowered FLOPs)`` of ``fn`` on ``args``."""
    compiled, flops = compile_with_flops(fn, *args)
    return common.time_fn(compiled, *args, repeats=repeats), flops


def run(preset: str, batch: int, ks: list[int], dtype: str, repeats: int,
        cap: common.TimeCap | None = None) -> list[dict]:
    cfg = ViTConfig.preset(preset, dtype=dtype)
    vit = ViT(cfg)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, cfg.image_size, cfg.image_size, 3)), dtype)
    y = jnp.asarray(np.random.default_rng(1).integers(0, cfg.num_classes, batch))
    variables = jax.jit(vit.init)(jax.random.key(0), x)
    opt = optax.adam(1e-4)
    count = lambda tree: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))

    # The plain network.
    forward, f_fwd = compile_with_flops(lambda v, x: vit.apply(v, x), variables, x)
    t_fwd = common.time_fn(forward, variables, x, repeats=repeats)
    params = variables["params"]
    plain_step = train_step(lambda p, x, y: tangent.cross_entropy(vit.apply({"params": p}, x), y), opt)
    t_step, f_step = timed(plain_step, params, opt.init(params), x, y, repeats=repeats)
    rows = [{"model": "plain", "trainable": count(params), "fwd_ms": 1e3 * t_fwd, "fwd_x": 1.0,
             "fwd_flops_x": 1.0, "step_ms": 1e3 * t_step, "step_x": 1.0, "step_flops_x": 1.0}]

    step = train_step(lambda d, m, f, y: tangent.cross_entropy(m.apply_features(d, f), y), opt)
    cap = cap or common.TimeCap(None)
    for k in ks + ["all"]:
        name = "linearize all" if k == "all" else f"TAFT-{k}"
        if cap.expired():
            rows.append({"model": name, "skipped": "time cap"})
            continue
        selector = None if k == "all" else tangent.taft(variables, k)
        model = tangent.from_linen(vit, variables, selector)
        d = model.zeros()
        row = {"model": name, "trainable": count(d)}
        fn, flops = compile_with_flops(lambda m, d, x: m(d, x), model, d, x)
        t = common.time_fn(fn, model, d, x, repeats=repeats)
        row.update(fwd_ms=1e3 * t, fwd_x=t / t_fwd, fwd_flops_x=flops / f_fwd)
        t, flops = timed(step, d, opt.init(d), model, model.features(x), y, repeats=repeats)
        row.update(step_ms=1e3 * t, step_x=t / t_step, step_flops_x=flops / f_step)
        if k != "all" and k < cfg.depth:
            start = cfg.depth - k
            cached = tangent.from_linen(vit, variables, selector, method=lambda m, h: m(h, start=start),
                                        features=lambda m, x: m(x, stop=start))
            h = jax.jit(lambda m, x: m.features(x))(cached, x)
            t, flops = timed(step, d, opt.init(d), cached, h, y, repeats=repeats)
            row.update(cached_step_ms=1e3 * t, cached_step_x=t / t_step, cached_step_flops_x=flops / f_step)
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(ViTConfig.PRESETS), help="ViT size")
    parser.add_argument("--batch", type=int, default=8, help="images per batch")
    parser.add_argument("--ks", default="1,4,12", help="comma-separated TAFT-k block counts")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median)")
    common.add_output_args(parser)
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.ks.split(",")]
    depth = ViTConfig.preset(args.preset).depth
    if any(not 1 <= k <= depth for k in ks):
        raise ValueError(f"--ks must lie in [1, {depth}] (the ViT depth); got {args.ks}")
    rows = run(args.preset, args.batch, ks, args.dtype, args.repeats, common.TimeCap(args.time_cap))
    columns = ["model", "trainable", "fwd_ms", "fwd_x", "fwd_flops_x", "step_ms", "step_x", "step_flops_x",
               "cached_step_ms", "cached_step_x", "cached_step_flops_x", "skipped"]
    print(common.format_table(rows, columns))
    cfg = ViTConfig.preset(args.preset, dtype=args.dtype)
    path = common.write_results("tangent", rows, out_dir=args.out,
                                config=vars(cfg) | {"preset": args.preset},
                                shapes={"images": [args.batch, cfg.image_size, cfg.image_size, 3]},
                                time_cap_s=args.time_cap)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
