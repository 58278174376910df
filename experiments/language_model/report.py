"""results.md and the plots, from the metrics records of the selected runs (mean ± std over seeds).

Throughput comes from the training records of `harness.fit` (examples per second over each logging
window, measured while training): the median over a run's windows, so that the window holding the
compilation does not count. Ratios are to the reference model (the Transformer) of the same seed,
measured in the same process, one model after the other.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import jax
import numpy as np

from experiments import harness
from experiments.language_model.config import STORAGE, Config, Run
from experiments.language_model.models import decoding_floats, max_length, model_config


def mean_std(values: Sequence[float | None], fmt: str = ".3f") -> str:
    """"m ± s" over seeds ("m" for one value, "-" for none)."""
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
    steps = np.diff([0] + [step for step, _ in windows])
    seconds = float(sum(n * batch_size / r for n, (_, r) in zip(steps, windows)))
    return {"tokens_per_s": rate * seq_len, "step_ms": 1e3 * batch_size / rate, "train_s": seconds}


def collect(config: Config, chosen: dict[str, float], records: list[dict]) -> dict[str, list[dict]]:
    """{model: [per seed: {"valid": bpb, "test": {length: record}, "speed": throughput, "samples":
    [records], "curve": [(step, training bpb)]}]} for the selected learning rate of each model."""
    out = {}
    for model, lr in chosen.items():
        out[model] = []
        for seed in config.seeds:
            name = Run(model, lr, seed).name
            mine = [r for r in records if r.get("run") == name]
            out[model].append({
                "valid": next((r["bpb"] for r in mine if r.get("split") == "valid"), None),
                "test": {r["length"]: r for r in mine if r.get("split") == "test"},
                "speed": throughput(records, name, config.batch_size, config.seq_len),
                "samples": sorted((r for r in mine if "sample" in r), key=lambda r: r["sample"]),
                "curve": sorted((r["step"], r["bpb"]) for r in mine if "examples_per_s" in r),
            })
    return out


def reference_model(config: Config) -> str:
    """The model the throughput ratios divide by: the Transformer, else the first model."""
    return "transformer" if "transformer" in config.models else config.models[0]


def _test(seed_stats: dict, length: int, key: str = "bpb") -> float | None:
    record = seed_stats["test"].get(length)
    return None if record is None else record[key]


def write(config: Config, chosen: dict[str, float], results: harness.Results, data) -> str:
    """Write results.md and the plots (loss_vs_position, bpb_vs_length, training); returns the
    Markdown. `data` is the experiment's `Data` (for the vocabulary and bytes per token)."""
    stats = collect(config, chosen, results.read_metrics())
    models, ref, T = list(config.models), reference_model(config), config.seq_len
    lengths = [m * T for m in sorted(config.extrapolation)]
    vocab = len(data.corpus.token_bytes)
    cfgs = {m: model_config(config, m, vocab) for m in models}

    def column(model: str, fn: Callable[[dict], float | None], fmt: str = ".3f") -> str:
        return mean_std([fn(s) for s in stats[model]], fmt)

    def speed_ratio(model: str) -> str:
        return mean_std([s["speed"]["tokens_per_s"] / r["speed"]["tokens_per_s"]
                         for s, r in zip(stats[model], stats[ref]) if s["speed"] and r["speed"]], ".2f")

    def perplexity(s: dict) -> float | None:
        nats = _test(s, T, "nats_per_token")
        return None if nats is None else math.exp(nats)

    main_rows = [[m, f"{cfgs[m].num_params():,}", cfgs[m].n_layers, cfgs[m].d_ff,
                  cfgs[m].ssm_kind if set(cfgs[m].block_types) - {"attention", "swa"} else "-",
                  f"{chosen[m]:g}", column(m, lambda s: s["valid"]), column(m, lambda s: _test(s, T)),
                  column(m, perplexity, ".2f"),
                  column(m, lambda s: s["speed"].get("tokens_per_s"), ".0f"),
                  column(m, lambda s: s["speed"].get("step_ms"), ".0f"), speed_ratio(m),
                  column(m, lambda s: s["speed"].get("train_s"), ".0f")] for m in models]
    extrapolation_rows = [[m, *(column(m, lambda s, L=L: _test(s, L)) for L in lengths)] for m in models]
    memory_rows = []
    for m in models:
        floats = [decoding_floats(cfgs[m], L) for L in lengths]
        growth = (floats[-1] - floats[0]) / max(1, lengths[-1] - lengths[0])
        memory_rows.append([m, *(f"{f:,}" for f in floats), f"{growth:.0f}"])
    limits = ", ".join(f"`{m}` {max_length(c)}" for m, c in cfgs.items() if max_length(c))

    device = jax.devices()[0]
    test_bytes = float(np.mean(data.corpus.token_bytes[data.windows["test"][:, 1:]]))
    sections = [
        "# Language modelling",
        f"Dataset `{config.dataset}`, {config.tokenizer} tokens (vocabulary {vocab}; "
        f"{test_bytes:.2f} bytes per test token). Every model: {config.steps} steps of "
        f"{config.batch_size} sequences of T = {T} tokens ({config.steps * config.batch_size * T:,} "
        f"tokens), AdamW with {config.warmup:.0%} warm-up and cosine decay, weight decay "
        f"{config.weight_decay}, clipping {config.grad_clip}; width {config.d_model}, {config.n_heads} "
        f"heads over {config.n_kv_heads} key-value heads, window {config.window}, SSM state "
        f"{config.ssm_state}, eidetic capacity {config.memory_slots}. Parameter counts matched to the "
        f"Transformer's through the MLP width (d_ff) or, for the MLP-free Mamba stacks, the depth. "
        f"Held-out splits: {config.eval_windows} windows of {config.max_len} tokens evenly spaced over "
        f"each, cut into windows of the evaluated length (every length predicts the same tokens). "
        f"Mean ± std over {len(config.seeds)} seed(s).{_storage_note(config)}",
        "## Perplexity and training speed",
        f"Bits per byte (tokenizer-independent) and perplexity per token at length T. Throughput while "
        f"training on {device.platform.upper()} ({device.device_kind}, {jax.device_count()} device(s)), "
        f"median over the logging windows; speed = tokens/s relative to `{ref}` of the same seed in the "
        f"same run. Train s: training wall time, compilation included.",
        harness.markdown_table(["model", "params", "layers", "d_ff", "SSM", "lr", "valid bpb",
                                "test bpb", "test ppl/token", "tokens/s", "step ms", "speed",
                                "train s"], main_rows),
        "## Length extrapolation",
        f"Test bits per byte of models trained at T = {T}, evaluated on windows of each length. Full "
        f"attention is built with max_len = {config.max_len} ({limits or 'none here'}): its position "
        "encoding has no learned parameters, so the parameters are those trained; longer sequences "
        "are refused.",
        harness.markdown_table(["model", *(f"{L // T}T = {L}" for L in lengths)], extrapolation_rows),
        "## Decoding memory",
        "Floats in the decoding state of one sequence (`bmojo.init_cache`) once the context holds n "
        "tokens: constant for recurrent models; full attention keeps the keys and values of every "
        "token (its cache built for max_len = n)."
        + (f" The `{STORAGE}` models' state includes their store ({config.storage_blocks} blocks and "
           "the ring that fills it): bounded by the capacity, not the context."
           if any(m.endswith(STORAGE) for m in config.models) else ""),
        harness.markdown_table(["model", *(f"n = {L}" for L in lengths), "floats per extra token"],
                               memory_rows),
    ]
    if config.samples:
        sections.append(
            f"## Samples\n\nRecurrent decoding (`bmojo.generate`), temperature {config.temperature}, "
            f"seed {config.seeds[0]}: the prompt (the start of a test window, {config.prompt_len} "
            f"tokens) in brackets, then {config.sample_len} generated tokens.")
        for m in models:
            for s in stats[m][0]["samples"]:
                body = f"[{s['prompt']}]{s['text']}".replace("```", "'''")
                sections.append(f"**{m}**, sample {s['sample']}\n\n```text\n{body}\n```")
    _plots(config, stats, lengths, results)
    markdown = "\n\n".join(sections)
    results.write_markdown([markdown])
    return markdown


def _storage_note(config: Config) -> str:
    """The sentence on the "+storage" models (empty without them)."""
    if not any(m.endswith(STORAGE) for m in config.models):
        return ""
    b, r = config.storage_block_size, config.storage_topk
    return (f" `PRESET{STORAGE}`: the same matched model (storage adds no parameter) trained and "
            f"evaluated with in-storage memory in its B'MOJO layers (`bmojo.storage`): the last "
            f"{config.storage_blocks} blocks of {b} tokens beyond both windows are kept, and every chunk "
            f"attends to the {r} most relevant ({r * b} reserved slots). A chunk retrieves only blocks that "
            f"ended 2W = {2 * config.window} tokens before it, so at T = {config.seq_len} few chunks "
            f"retrieve; the far past matters at the longer lengths.")


def _plots(config: Config, stats: dict, lengths: list[int], results: harness.Results) -> None:
    T, longest = config.seq_len, config.max_len
    width = longest // config.position_buckets
    centers = [(j + 0.5) * width for j in range(config.position_buckets)]
    by_position, by_length, training = {}, {}, {}
    for m, per_seed in stats.items():
        buckets = [s["test"][longest]["bucket_bpb"] for s in per_seed if longest in s["test"]]
        if buckets:
            by_position[m] = (centers, list(np.mean(buckets, axis=0)))
        if all(L in s["test"] for s in per_seed for L in lengths):
            by_length[m] = (lengths, [float(np.mean([s["test"][L]["bpb"] for s in per_seed]))
                                      for L in lengths])
        if per_seed[0]["curve"]:
            training[m] = tuple(map(list, zip(*per_seed[0]["curve"])))
    results.plot("loss_vs_position", [{
        "series": by_position, "title": f"test windows of {longest} (T = {T})",
        "xlabel": "token position (bucket centre)", "ylabel": "bits per byte"}])
    results.plot("bpb_vs_length", [{
        "series": by_length, "title": f"test (trained at T = {T})", "xlabel": "evaluation length",
        "ylabel": "bits per byte", "logx": True}])
    results.plot("training", [{
        "series": training, "title": f"training batches (seed {config.seeds[0]})", "xlabel": "step",
        "ylabel": "bits per byte"}])
