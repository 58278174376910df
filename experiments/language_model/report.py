"""results.md and the plots, from the metrics records of the selected runs (mean and std over seeds).

Throughput comes from the training records of `harness.fit` (examples per second over each logging
window, measured while training): the median over a run's windows, so that the window that holds the
compilation does not count. Ratios are to the Transformer of the same seed, measured in the same
process one after the other.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

import jax

from experiments import harness
from experiments.language_model.config import Config, Run
from experiments.language_model.models import decoding_floats, max_length, model_config


def mean_std(values: Sequence[float], fmt: str = ".3f") -> str:
    """"m ± s" over seeds ("m" alone for one value, "-" for none)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(float(np.mean(values)), fmt)} ± {format(float(np.std(values, ddof=1)), fmt)}"


def throughput(records: list[dict], run: str, batch_size: int, seq_len: int) -> dict:
    """From the training records of `run`: median tokens/s and step time (ms) over its logging
    windows, and the training wall time (s, the sum of the windows, compilation included)."""
    windows = sorted((r["step"], r["examples_per_s"]) for r in records
                     if r.get("run") == run and "examples_per_s" in r)
    if not windows:
        return {}
    rate = statistics.median(rate for _, rate in windows)
    steps = np.diff([0] + [s for s, _ in windows])
    seconds = float(sum(n * batch_size / rate for n, (_, rate) in zip(steps, windows)))
    return {"tokens_per_s": rate * seq_len, "step_ms": 1e3 * batch_size / rate, "train_s": seconds}


def collect(config: Config, chosen: dict[str, float], records: list[dict]) -> dict[str, list[dict]]:
    """{model: [per seed: {"valid", "test": {length: record}, "speed": {...}, "samples": [...],
    "curve": [(step, bpb)]}]} for the selected learning rate of each model."""
    out = {}
    for model, lr in chosen.items():
        per_seed = []
        for seed in config.seeds:
            name = Run(model, lr, seed).name
            mine = [r for r in records if r.get("run") == name]
            per_seed.append({
                "valid": next((r["bpb"] for r in mine if r.get("split") == "valid"), None),
                "test": {r["length"]: r for r in mine if r.get("split") == "test"},
                "speed": throughput(records, name, config.batch_size, config.seq_len),
                "samples": sorted((r for r in mine if "sample" in r), key=lambda r: r["sample"]),
                "curve": sorted((r["step"], r["bpb"]) for r in mine if "examples_per_s" in r),
            })
        out[model] = per_seed
    return out


def reference_model(config: Config) -> str:
    return "transformer" if "transformer" in config.models else config.models[0]


def write(config: Config, chosen: dict[str, float], results: harness.Results, data) -> str:
    """Write results.md and the plots; returns the Markdown."""
    stats = collect(config, chosen, results.read_metrics())
    models = list(config.models)
    vocab = len(data.corpus.token_bytes)
    cfgs = {m: model_config(config, m, vocab) for m in models}
    ref = reference_model(config)
    T, lengths = config.seq_len, [m * config.seq_len for m in sorted(config.extrapolation)]
    bytes_per_token = {s: float(np.mean(data.corpus.token_bytes[w[:, 1:]])) for s, w in data.windows.items()}

    def per_seed(model, fn):
        return [fn(s) for s in stats[model]]

    def test_at(s, length, key="bpb"):
        return s["test"][length][key] if length in s["test"] else None

    def ratio(model, key):
        values = []
        for s, r in zip(stats[model], stats[ref]):
            if s["speed"] and r["speed"]:
                values.append(s["speed"][key] / r["speed"][key])
        return values

    main_rows = []
    for m in models:
        c = cfgs[m]
        main_rows.append([
            m, f"{c.num_params():,}", c.n_layers, c.d_ff, c.ssm_kind if set(c.block_types) & {"mamba", "bmojo", "bmojo_f"} else "-",
            f"{chosen[m]:g}",
            mean_std(per_seed(m, lambda s: s["valid"])),
            mean_std(per_seed(m, lambda s: test_at(s, T))),
            mean_std(per_seed(m, lambda s: math.exp(test_at(s, T, "nats_per_token"))
                              if test_at(s, T) is not None else None), ".2f"),
            mean_std(per_seed(m, lambda s: s["speed"].get("tokens_per_s")), ".0f"),
            mean_std(per_seed(m, lambda s: s["speed"].get("step_ms")), ".0f"),
            mean_std(ratio(m, "tokens_per_s"), ".2f"),
            mean_std(per_seed(m, lambda s: s["speed"].get("train_s")), ".0f"),
        ])
    device = jax.devices()[0]
    seeds = f"{len(config.seeds)} seed{'s' if len(config.seeds) > 1 else ''}"
    sections = [
        "# Language modelling",
        f"Dataset `{config.dataset}` ({config.tokenizer} tokens, vocabulary {vocab}; the test windows "
        f"average {bytes_per_token['test']:.2f} bytes per token). Training length T = {T}, "
        f"{config.steps} steps of {config.batch_size} sequences ({config.steps * config.batch_size * T:,} "
        f"tokens per model), AdamW with {config.warmup:.0%} warm-up and cosine decay, weight decay "
        f"{config.weight_decay}, clipping {config.grad_clip}; width {config.d_model}, {config.n_heads} heads "
        f"over {config.n_kv_heads} key-value heads, window {config.window}, SSM state {config.ssm_state}, "
        f"eidetic capacity {config.memory_slots}. Parameter counts matched to the Transformer's by the MLP "
        f"width (d_ff) or, without MLP, the depth. Evaluation: {config.eval_windows} windows of "
        f"{config.max_len} tokens evenly spaced over each held-out split, cut into windows of the "
        f"evaluated length (every length predicts the same tokens). Mean ± std over {seeds}.",
        "## Perplexity and training speed",
        f"Bits per byte (tokenizer-independent) and perplexity per token at length T; throughput while "
        f"training on {device.platform.upper()} ({device.device_kind}), median over the logging windows; "
        f"speed = tokens/s relative to `{ref}` of the same seed, same run. Train s: wall time of training "
        f"(compilation included).",
        harness.markdown_table(["model", "params", "layers", "d_ff", "SSM", "lr", "valid bpb", "test bpb",
                                "test ppl/token", "tokens/s", "step ms", "speed", "train s"], main_rows),
        "## Length extrapolation",
        f"Test bits per byte of models trained at T = {T}, evaluated on windows of each length. Full "
        f"attention is built with max_len = {config.max_len} (RoPE: no learned positions, so the "
        f"parameters are the same); longer sequences are refused.",
        harness.markdown_table(["model", *(f"{L // T}T = {L}" for L in lengths)],
                               [[m, *(mean_std(per_seed(m, lambda s, L=L: test_at(s, L))) for L in lengths)]
                                for m in models]),
        "## Decoding memory",
        "Floats in the decoding state of one sequence (`bmojo.init_cache`) once the context holds n "
        "tokens: constant for recurrent models; full attention keeps the keys and values of every token "
        "(its cache built for max_len = n).",
        harness.markdown_table(
            ["model", *(f"n = {L}" for L in lengths), "floats per extra token"],
            [[m, *(f"{decoding_floats(cfgs[m], L):,}" for L in lengths),
              f"{(decoding_floats(cfgs[m], lengths[-1]) - decoding_floats(cfgs[m], lengths[0])) / max(1, lengths[-1] - lengths[0]):.0f}"]
             for m in models]),
    ]
    if config.samples:
        sections.append(f"## Samples\n\nRecurrent decoding (`bmojo.generate`), temperature "
                        f"{config.temperature}, seed {config.seeds[0]}: the prompt (the start of a test "
                        f"window, {config.prompt_len} tokens) in brackets, then {config.sample_len} "
                        "generated tokens.")
        for m in models:
            for s in stats[m][0]["samples"]:
                body = f"[{s['prompt']}]{s['text']}".replace("```", "'''")
                sections.append(f"**{m}**, sample {s['sample']}\n\n```text\n{body}\n```")

    longest = config.max_len
    width = longest // config.position_buckets
    centers = [(j + 0.5) * width for j in range(config.position_buckets)]
    curves = {}
    for m in models:
        buckets = [s["test"][longest]["bucket_bpb"] for s in stats[m] if longest in s["test"]]
        if buckets:
            curves[m] = (centers, list(np.mean(buckets, axis=0)))
    results.plot("loss_vs_position", [{
        "series": curves, "title": f"test, windows of {longest} (trained at {T})",
        "xlabel": "token position", "ylabel": "bits per byte"}])
    results.plot("bpb_vs_length", [{
        "series": {m: (lengths, [float(np.mean([test_at(s, L) for s in stats[m] if L in s["test"]]))
                                 for L in lengths]) for m in models if stats[m][0]["test"]},
        "title": f"test (trained at T = {T})", "xlabel": "evaluation length", "ylabel": "bits per byte",
        "logx": True}])
    results.plot("training", [{
        "series": {m: tuple(map(list, zip(*stats[m][0]["curve"]))) for m in models if stats[m][0]["curve"]},
        "title": f"training (seed {config.seeds[0]})", "xlabel": "step", "ylabel": "bits per byte"}])
    limits = {m: max_length(cfgs[m]) for m in models}
    if any(limits.values()):
        sections.append("Models with full attention and their max_len: " + ", ".join(
            f"`{m}` {limit}" for m, limit in limits.items() if limit) + ".")
    markdown = "\n\n".join(sections)
    results.write_markdown([markdown])
    return markdown
