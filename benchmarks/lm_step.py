"""The training step of every language-model preset: tokens/s and peak memory, as ratios to the
Transformer.

Each preset is built as `python -m experiments.language_model` builds it (matched parameter count,
its loss and AdamW step, `harness.make_train_step`), at each context length with a fixed number of
tokens per step, and runs with its own kernels (`implementation=None`: Pallas on GPU/TPU, XLA on
CPU). The reference is the same Transformer (same parameters) with its attention computed by
`jax.nn.dot_product_attention`: cuDNN flash attention on GPU ("cudnn"), XLA elsewhere; the module's
attention call is replaced with `flax.linen.intercept_methods`, nothing else changes.

Peak memory is what XLA plans for the compiled step (`compiled.memory_analysis()`: arguments +
outputs + temporaries - donated aliases; `temp_gib`: the temporaries alone); time is the median of
the timed steps (the state is donated and fed back, as in training). `--memory-only` compiles each
step and reports its memory without running it. `--models-from library` builds every preset at the
library's defaults (`bmojo.preset(name)`: 4 layers of width 128, window 64, state 16, Mamba-1 in the
hybrids) instead of the experiment's matched models.

    python -m benchmarks.lm_step                 # CPU-sized: the experiment's default models at 256/1024
    python -m benchmarks.lm_step --sizes paper   # the 130M models at 2K and 8K context, bf16 (GPU/TPU)
    python -m benchmarks.lm_step --sizes memory --models-from library --memory-only \
        --models mamba,mamba2,bmojo     # issue 15: training temporaries at 4K tokens, batch 4
    (--models=a,b to choose presets, --out DIR for the JSON, --time-cap SECONDS)

Goal on an H100/H200: B'MOJO's step at least as fast as the Transformer's at 2K and faster at 8K.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import bmojo
from benchmarks import common
from experiments import harness
from experiments.language_model import PRESETS
from experiments.language_model.config import STORAGE, model_names
from experiments.language_model.models import model_config
from experiments.language_model.train import make_loss_fn, optimizer

SIZES = {
    "quick": {"preset": "default", "lengths": (256, 1024), "tokens_per_step": 2048},
    "paper": {"preset": "paper", "lengths": (2048, 8192), "tokens_per_step": 65536},
    "memory": {"preset": "default", "lengths": (4096,), "tokens_per_step": 16384},
}
MODELS_FROM = ("experiment", "library")
REFERENCE = "transformer"


def dot_product_attention(implementation: str):
    """A flax method interceptor: `SlidingWindowAttention.__call__` computed by
    `jax.nn.dot_product_attention(implementation=...)` from the module's own projections."""

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if not (isinstance(module, bmojo.SlidingWindowAttention) and context.method_name == "__call__"):
            return next_fun(*args, **kwargs)
        (x,) = args
        positions = jnp.arange(x.shape[1])
        q = module.queries(x, positions)
        k, v = module.keys_values(x, positions)
        local = None if module.window >= x.shape[1] else (module.window - 1, 0)
        out = jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=local,
                                           implementation=implementation)
        return module.output(out)

    return interceptor


def reference_apply(model: bmojo.LanguageModel, implementation: str):
    """`model.apply` with its attention computed by `jax.nn.dot_product_attention`."""

    def apply(params, tokens):
        with nn.intercept_methods(dot_product_attention(implementation)):
            return model.apply(params, tokens)

    return apply


class _Reference:
    """A stand-in for `LanguageModel` in `make_loss_fn`: only `.apply` is used."""

    def __init__(self, apply):
        self.apply = apply


def step_and_state(cfg: bmojo.ModelConfig, config, batch: int, length: int, reference: str | None):
    """The jitted, donating train step, its initial state and a batch."""
    model = bmojo.LanguageModel(cfg)
    tokens = jax.random.randint(jax.random.key(1), (batch, length + 1), 0, cfg.vocab_size)
    data = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    params = jax.jit(model.init)(jax.random.key(0), data["inputs"][:1, :8])
    net = _Reference(reference_apply(model, reference)) if reference else model
    opt = optimizer(config, 1e-4)
    step = jax.jit(harness.make_train_step(make_loss_fn(net, np.ones(cfg.vocab_size, np.int32)), opt),
                   donate_argnums=0)
    return step, harness.TrainState.create(params, opt, 0), data


def library_config(name: str, vocab: int, length: int) -> bmojo.ModelConfig:
    """Preset `name` at the library's defaults (`bmojo.preset`), for `vocab` tokens and `length`."""
    return bmojo.preset(name, vocab_size=vocab, max_len=max(length, bmojo.ModelConfig.max_len))


def measure(step, state, data, repeats: int) -> dict:
    """Peak and temporary bytes of the compiled step and, unless `repeats` is 0, the median step
    time (s) over `repeats` steps."""
    compiled = step.lower(state, data).compile()
    mem = compiled.memory_analysis()
    peak = temp = None
    if mem is not None:
        peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes)
        temp = mem.temp_size_in_bytes
    if repeats == 0:
        return {"seconds": None, "peak_bytes": peak, "temp_bytes": temp}
    for _ in range(2):  # warm-up
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - tic)
    return {"seconds": statistics.median(times), "peak_bytes": peak, "temp_bytes": temp}


def run(sizes: str, repeats: int, cap: common.TimeCap, models: tuple[str, ...] | None = None,
        models_from: str = "experiment") -> list[dict]:
    """Rows of every model at every length; `repeats` 0: compiled memory only."""
    spec = SIZES[sizes]
    on_gpu = jax.default_backend() == "gpu"
    reference_impl = "cudnn" if on_gpu else "xla"
    rows = []
    for length in spec["lengths"]:
        config = dataclasses.replace(PRESETS[spec["preset"]], seq_len=length, extrapolation=(1,),
                                     position_buckets=1, prompt_len=1, sample_len=1)
        batch = max(1, spec["tokens_per_step"] // length)
        vocab = 256 if config.tokenizer == "byte" else config.bpe_vocab
        cases = [(f"{REFERENCE} (dot_product_attention {reference_impl})", REFERENCE, reference_impl)]
        names = models or tuple(m for m in config.models  # the library presets have no storage
                                if models_from == "experiment" or not m.endswith(STORAGE))
        cases += [(name, name, None) for name in names]
        for label, name, reference in cases:
            cfg = (model_config(config, name, vocab) if models_from == "experiment"
                   else library_config(name, vocab, length))
            row = {"model": label, "length": length, "batch": batch, "params": cfg.num_params()}
            if cap.expired():
                rows.append({**row, "skipped": "time cap"})
                continue
            try:
                out = measure(*step_and_state(cfg, config, batch, length, reference), repeats)
            except Exception as err:  # e.g. cuDNN rejects a shape, or memory runs out: keep going
                row["error"] = f"{type(err).__name__}: {str(err)[:160]}"
                rows.append(row)
                continue
            gib = {k: None if out[k] is None else out[k] / 2**30
                   for k in ("peak_bytes", "temp_bytes")}
            row.update(peak_gib=gib["peak_bytes"], temp_gib=gib["temp_bytes"])
            if out["seconds"] is not None:
                row.update(step_ms=out["seconds"] * 1e3,
                           tokens_per_s=batch * length / out["seconds"])
            rows.append(row)
            print(common.format_table([row], list(row)), flush=True)
        ref = rows[-len(cases)]
        for row in rows[-len(cases):]:
            if "tokens_per_s" in row and "tokens_per_s" in ref:
                row["speed_vs_reference"] = row["tokens_per_s"] / ref["tokens_per_s"]
            if row.get("peak_gib") and ref.get("peak_gib"):
                row["memory_vs_reference"] = row["peak_gib"] / ref["peak_gib"]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", choices=sorted(SIZES), default="quick",
                        help="quick: CPU-sized (default); paper: 130M models at 2K and 8K, bf16; "
                             "memory: 4K tokens, batch 4 (issue 15's training memory)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per entry (default: 3 quick, 10 paper)")
    parser.add_argument("--models", default=None,
                        help="comma-separated presets or PRESET+storage (default: the experiment's models)")
    parser.add_argument("--models-from", choices=MODELS_FROM, default="experiment",
                        help="experiment: the models of experiments.language_model, matched in "
                             "parameters (default); library: bmojo.preset(name) at its defaults")
    parser.add_argument("--memory-only", action="store_true",
                        help="compile each step and report its memory; run nothing")
    common.add_output_args(parser)
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.sizes == "quick" else 10)
    if repeats < 1:
        parser.error(f"--repeats={repeats}: expected a positive integer")
    models = tuple(args.models.split(",")) if args.models else None
    unknown = [m for m in models or () if m not in model_names()]
    if unknown:
        parser.error(f"--models has {unknown}; expected names from {model_names()}")
    if args.models_from == "library" and any(m.endswith(STORAGE) for m in models or ()):
        parser.error(f"--models {args.models} with --models-from library: the library presets have "
                     "no in-storage memory; name plain presets")
    rows = run(args.sizes, 0 if args.memory_only else repeats, common.TimeCap(args.time_cap),
               models, args.models_from)
    columns = ["model", "length", "batch", "params", "step_ms", "tokens_per_s", "peak_gib",
               "temp_gib", "speed_vs_reference", "memory_vs_reference", "error", "skipped"]
    print(common.format_table(rows, columns))
    path = common.write_results("lm_step", rows, out_dir=args.out, sizes=args.sizes,
                                spec=SIZES[args.sizes], time_cap_s=args.time_cap,
                                models_from=args.models_from, memory_only=args.memory_only,
                                reference=f"{REFERENCE} with jax.nn.dot_product_attention")
    print(f"\nwrote {path}")
    print("speed_vs_reference = tokens/s of the row / tokens/s of the reference Transformer (> 1: faster)")


if __name__ == "__main__":
    main()
