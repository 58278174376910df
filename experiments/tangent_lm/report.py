"""results.md and bpb.png from the metrics records (mean ± std over seeds)."""

from __future__ import annotations

import numpy as np

from experiments.harness import markdown_table
from experiments.tangent_composition.measure import mean_std, pm
from experiments.tangent_lm.domains import domain_plays


def _pm(values) -> str:
    return pm(values) if values else "-"


def write(ex, chosen: dict[str, float]) -> str:
    """Write results.md and bpb.png; returns the Markdown."""
    c, names = ex.config, list(ex.windows.names)
    pre = {n: ex.find(section="pretrained", domain=n, split="test")[0]["bpb"] for n in names + ["union"]}

    def adapted(method, name):
        return [r["bpb"] for r in ex.find(section="adapt", method=method, lr=chosen[method], split="test",
                                          domain=name)]

    rows = [[n, f"{pre[n]:.3f}", _pm(adapted("tangent", n)), _pm(adapted("non-linear", n))] for n in names]
    sections = [f"""# Tangent fine-tuning, composition and forgetting of a byte-level {c.model} LM

Pretrained: {c.checkpoint or 'OUT/pretrained'} ({ex.model_cfg.num_params():,} parameters, {ex.model_cfg.n_layers}
blocks; pretraining never read the domains' plays). Domains: {', '.join(names)} (First Folio genres),
split by play: {'; '.join(f"{n}: train {', '.join(p['train'])}, valid {p['valid'][0]}, test {p['test'][0]}"
                          for n, p in ((d, domain_plays(d, c.plays_per_domain)) for d in names))}.
Adapted: the last {c.k} block(s), the final norm and the head (TAFT-{c.k}); {c.steps} Adam steps of
{c.batch_size} windows of {ex.windows.train_inputs.shape[-1]} bytes from {c.train_windows} fixed windows per
domain; learning rate chosen on the validation play (tangent {chosen['tangent']:g}, non-linear
{chosen['non-linear']:g}); seeds {list(c.seeds)}, mean ± std. Test bits per byte, {c.eval_windows} windows
per domain.""",
                "## 1. Tangent (TAFT) against non-linear fine-tuning\n\n"
                + markdown_table(["domain", "pretrained", f"tangent TAFT-{c.k}", "non-linear"], rows)]

    evals = names + ["union"]
    comp = {(e, m): [r["bpb"] for r in ex.find(section="compose", eval=e, method=m)]
            for e in evals for m in ("composition", "ensemble", "soup")}
    rows = [[e, f"{pre[e]:.3f}", *(_pm(comp[e, m]) for m in ("composition", "ensemble", "soup"))]
            for e in evals]
    sections.append("## 2. Composition of the domain components\n\nComposition: the mean of the tangent "
                    "components (one model); ensemble: the mean of the non-linear models' next-byte "
                    "distributions; soup: the non-linear models' mean weights. Union: all domains' test "
                    "windows.\n\n"
                    + markdown_table(["test on", "pretrained", "composition", "ensemble", "soup"], rows))
    inf = ex.find(section="inference")
    rows = []
    for n in sorted({r["n"] for r in inf}):
        row = [n]
        for m in ("composition", "ensemble", "soup"):
            r = next(r for r in inf if r["n"] == n and r["method"] == m)
            row += [f"{r['gflops']:.3g}", f"{r['ms']:.1f}"]
        rows.append(row)
    sections.append(f"### Inference cost of one batch of {c.eval_batch_size} windows against n components\n\n"
                    + markdown_table(["n", "composition GFLOP", "ms", "ensemble GFLOP", "ms", "soup GFLOP", "ms"],
                                     rows))

    forget = ex.find(section="forget")
    keys = ["composition of all", "after forgetting", "never held", "own component"]
    rows = [[r["seed"], f"{r['max_abs_diff']:.1e}", f"{r['empty_max_abs_diff']:.1e}",
             f"{pre[c.forget_domain]:.3f}", *(f"{r['bpb'][k]:.3f}" for k in keys)] for r in forget]
    sections.append(f"## 3. Forgetting {c.forget_domain}\n\nMax abs difference of the logits on its test "
                    "windows: after removing its component against a composition that never held it; and "
                    "removing the only component against the pretrained network itself. Bits per byte on "
                    f"{c.forget_domain}.\n\n"
                    + markdown_table(["seed", "max |diff| vs never held", "max |diff| empty vs pretrained",
                                      "pretrained", *keys], rows))

    dp = ex.find(section="dp")
    if dp:
        eps = [r["epsilon"] for r in dp]
        rows = [[c.dp_domain, f"{mean_std(eps)[0]:.2f}", f"{c.dp_delta:g}", f"{c.dp_noise:g}", f"{c.dp_clip:g}",
                 _pm([r["bpb"] for r in dp]), _pm(adapted("tangent", c.dp_domain)), f"{pre[c.dp_domain]:.3f}"]]
        sections.append("## 4. DP-SGD on one domain\n\nThe tangent component trained with DP-SGD (a training "
                        "window is the unit of privacy; epsilon of what ran, from `dp-accounting`).\n\n"
                        + markdown_table(["domain", "epsilon", "delta", "noise", "clip", "DP tangent",
                                          "non-private tangent", "pretrained"], rows))

    cost = ex.find(section="cost")
    rows = [[r["model"], r["blocks"], r["k"], f"{r['tangent_ms']:.1f}", f"{r['nonlinear_ms']:.1f}",
             f"{r['ratio']:.2f}", r["backend"]] for r in cost]
    if cost:
        sections.append("## 5. Cost of a tangent training step\n\nOne jitted gradient step on cached features "
                        f"({c.batch_size} windows), median of {c.cost_repeats}, randomly initialised models at "
                        "the matched size; ratio = tangent / non-linear, measured in one process.\n\n"
                        + markdown_table(["model", "blocks", "k", "tangent ms", "non-linear ms", "ratio",
                                          "backend"], rows))

    x = list(range(len(names)))
    series = {"pretrained": (x, [pre[n] for n in names])}
    for m in ("tangent", "non-linear"):
        series[m] = (x, [float(np.mean(adapted(m, n))) for n in names])
    series["composition"] = (x, [float(np.mean(comp[n, "composition"])) for n in names])
    series["ensemble"] = (x, [float(np.mean(comp[n, "ensemble"])) for n in names])
    ex.results.plot("bpb", [{"series": series, "title": "test bits per byte by domain", "xlabel": "domain",
                             "ylabel": "bits per byte", "xticks": x}])
    sections.append("![bits per byte](bpb.png) (x: " + ", ".join(f"{i} = {n}" for i, n in enumerate(names)) + ")")
    ex.results.write_markdown(sections)
    return "\n\n".join(sections)
