"""results.md (tables with mean +- standard deviation over seeds) and the two plots."""

from __future__ import annotations

import jax

from experiments import harness
from experiments.associative_recall import plan
from experiments.associative_recall.config import Config
from experiments.associative_recall.measure import mean_std, memory_floats


def _trials(config: Config, arm: plan.Arm, chosen: dict[str, float]) -> list[plan.Trial]:
    if arm.lr_from is None:
        return [plan.Trial(arm, chosen[arm.name], s) for s in range(config.seeds)]
    return [plan.Trial(arm, chosen[arm.lr_from], s) for s in range(config.extra_seeds)]


def _spread(values: list[int], min_ratio: float = 1.3) -> list[int]:
    """The values kept as tick labels: each at least `min_ratio` times the previous one (log axis)."""
    kept: list[int] = []
    for v in values:
        if not kept or v >= min_ratio * kept[-1]:
            kept.append(v)
    return kept


def _cell(values) -> str:
    mean, std = mean_std(values)
    return f"{mean:.3f} ± {std:.3f}" if len(values) > 1 else f"{mean:.3f}"


class _Table:
    """Accuracies of the arms, read from the final records."""

    def __init__(self, config: Config, records: dict[str, dict], chosen: dict[str, float]):
        self.config, self.records, self.chosen = config, records, chosen

    def accuracies(self, arm: plan.Arm, pairs: int, key: str = "test_accuracy") -> list[float]:
        return [self.records[t.name][key][str(pairs)] for t in _trials(self.config, arm, self.chosen)]

    def mean_accuracies(self, arm: plan.Arm) -> list[float]:
        per_seed = zip(*(self.accuracies(arm, p) for p in self.config.eval_pairs))
        return [sum(row) / len(row) for row in per_seed]

    def row(self, arm: plan.Arm) -> list[str]:
        return [_cell(self.accuracies(arm, p)) for p in self.config.eval_pairs] + [_cell(self.mean_accuracies(arm))]

    def epochs(self, arm: plan.Arm) -> float:
        trials = _trials(self.config, arm, self.chosen)
        return sum(self.records[t.name]["epochs"] for t in trials) / len(trials)


def write(config: Config, records: dict[str, dict], chosen: dict[str, float], results: harness.Results,
          seconds: float) -> str:
    """Write results.md, accuracy_vs_pairs.png and accuracy_vs_memory.png; return the Markdown."""
    table = _Table(config, records, chosen)
    pairs = list(config.eval_pairs)
    hardest = max(pairs)
    chance = 1 / (config.vocab_size - config.vocab_size // 2)
    pair_cols = [f"{p} pairs" for p in pairs]
    main = plan.main_arms(config)
    models = {arm.name: plan.model_config(config, arm) for arm in plan.all_arms(config)}
    memory = {name: memory_floats(m, config.seq_len) for name, m in models.items()}
    sizes = (f"vocabulary {config.vocab_size}, length {config.seq_len}, {config.fillers} fillers, "
             f"width {config.d_model}, {config.n_layers} layers, window {config.window}")
    sections = [
        "# Multi-query associative recall",
        f"Task: {sizes}; SSM state {config.ssm_state} ({config.hybrid_ssm} in the hybrids); B'MOJO's "
        f"eidetic capacity {config.memory_slots}. Protocol (Zoology's): a fixed training set of "
        f"{config.train_examples} sequences mixing {', '.join(map(str, config.train_pairs))} pairs, at most "
        f"{config.max_epochs} epochs of {config.batch_size}, early stop when validation accuracy reaches "
        f"{config.early_stop}; learning rate chosen per model on the validation split ({config.valid_examples} "
        f"sequences) from {', '.join(f'{lr:g}' for lr in config.learning_rates)} with the first seed; then "
        f"{config.seeds} seeds per model (sweep points and ablations: {config.extra_seeds}, at their family's "
        f"rate). Test accuracy at the query positions of {config.test_examples} sequences per number of pairs, "
        f"mean ± standard deviation over seeds; chance {chance:.3f}. Memory: floats of state a model reads "
        f"(KV cache, SSM state, eidetic store). {len(records)} runs, {seconds / 60:.1f} min of this call on "
        f"{jax.device_count()} {jax.devices()[0].platform.upper()} device(s).",
        harness.markdown_table(
            ["model", "params", "memory (floats)", "learning rate", "epochs", *pair_cols, "mean"],
            [[a.name, models[a.name].num_params(), memory[a.name], f"{chosen[a.name]:g}",
              f"{table.epochs(a):.1f}", *table.row(a)] for a in main]),
        "## Learning-rate sweep (validation accuracy, first seed)",
        harness.markdown_table(
            ["model", *(f"lr {lr:g}" for lr in config.learning_rates), "chosen"],
            [[a.name, *(records[plan.Trial(a, lr, 0).name]["valid_accuracy"] for lr in config.learning_rates),
              f"{chosen[a.name]:g}"] for a in plan.all_arms(config) if a.lr_from is None]),
    ]

    points = [(arm, knob, value) for arm, knob, value in plan.sweep_arms(config)]
    swept = {arm.name for arm, _, _ in points}
    rows = [(memory[a.name], a.name, table.accuracies(a, hardest)) for a in main if a.name not in swept]
    rows += [(memory[a.name], a.name, table.accuracies(a, hardest)) for a, _, _ in points]
    sections += [
        f"## Accuracy against total memory ({hardest} pairs)",
        "Every model and every point of the memory sweep, ordered by memory, so that models can be compared "
        "at matched memory.",
        harness.markdown_table(["model", "memory (floats)", f"accuracy ({hardest} pairs)"],
                               [[name, mem, _cell(acc)] for mem, name, acc in sorted(rows, key=lambda r: r[:2])]),
    ]
    for group, arms in plan.ablation_arms(config).items():
        rows, label = [], "study's setting" if config.ssm_residual else "paper"
        for base in (a for a in main if a.name in plan.baseline_of(group)):
            rows.append([f"{base.name} ({label})", *table.row(base)])
            rows += [[a.name, *table.row(a)] for a in arms if a.preset == base.preset]
        rows += [[a.name, *table.row(a)] for a in arms if a.preset not in plan.baseline_of(group)]
        sections += [f"## Ablation: {group}", harness.markdown_table(["setting", *pair_cols, "mean"], rows)]
    if config.eval_length:
        arms = main + [a for group in plan.ablation_arms(config).values() for a in group]
        sections += [
            f"## Length generalisation: trained at {config.seq_len}, tested at {config.eval_length} tokens",
            harness.markdown_table(
                ["model", *(f"{p} pairs @{config.seq_len}" for p in pairs),
                 *(f"{p} pairs @{config.eval_length}" for p in pairs)],
                [[a.name, *(_cell(table.accuracies(a, p)) for p in pairs),
                  *(_cell(table.accuracies(a, p, "long_accuracy")) for p in pairs)] for a in arms])]
    markdown = "\n\n".join(sections)
    results.write_markdown([markdown])

    title = f"MQAR: {sizes}"
    series = {}
    for arm in main:
        acc = [mean_std(table.accuracies(arm, p)) for p in pairs]
        series[arm.name] = (pairs, [m for m, _ in acc], [s for _, s in acc])
    results.plot("accuracy_vs_pairs", [{
        "series": series, "title": title, "xlabel": "key-value pairs", "ylabel": "test accuracy",
        "logx": True, "xticks": pairs, "ylim": (0, 1.02), "hlines": {"chance": chance}}])
    curves = {}
    for arm, knob, value in points:
        xs, ys, es = curves.setdefault(f"{arm.preset} ({knob})", ([], [], []))
        m, s = mean_std(table.accuracies(arm, hardest))
        xs.append(memory[arm.name])
        ys.append(m)
        es.append(s)
    for arm in main:
        if arm.name not in swept:
            m, s = mean_std(table.accuracies(arm, hardest))
            curves[arm.name] = ([memory[arm.name]], [m], [s])
    ticks = _spread(sorted({x for xs, _, _ in curves.values() for x in xs}))
    results.plot("accuracy_vs_memory", [{
        "series": curves, "title": f"{title}; {hardest} pairs", "xlabel": "total memory (floats)",
        "ylabel": "test accuracy", "logx": True, "xticks": ticks, "ylim": (0, 1.02),
        "hlines": {"chance": chance}}])
    return markdown
