"""Section 6: DP-SGD on the TAFT-k tangent vector, private only and mixed public/private (AdaMix's
setting), test accuracy against epsilon with the non-private upper bound."""

from __future__ import annotations

import numpy as np

import tangent
from experiments.harness import markdown_table
from experiments.tangent_composition import measure
from experiments.tangent_composition.finetuning import method_name
from experiments.tangent_composition.training import TANGENT, Setup, evaluate, fit

PRIVATE, MIXED = "DP-SGD on all data", "public adaptation, then DP-SGD on the private data"


def run(setup: Setup) -> tuple[str, dict]:
    c, k, data = setup.config, setup.config.k, setup.main
    lr = setup.summaries["taft"]["lr"][f"{k}/{TANGENT if k else 'probe'}"]
    labels = data.labels("test")
    acc = lambda seed, d: measure.accuracy(evaluate(data, k, TANGENT, seed, d), labels)
    results, public_only = {}, []
    for seed in setup.seeds:
        order = np.random.default_rng(seed).permutation(data.n_train)
        n_public = max(1, round(c.public_fraction * data.n_train))
        public, private = order[:n_public], order[n_public:]
        setup.log(f"6/6 public adaptation on {n_public} examples, seed {seed}")
        adapted = fit(setup, data, k, TANGENT, lr=lr, seed=seed, index=public)
        public_only.append(acc(seed, adapted.tangent))
        for sigma in c.dp_noise:
            dp = tangent.DPSGD(c.dp_clip, sigma)
            for setting, index, start in ((PRIVATE, None, None), (MIXED, private, adapted.tangent)):
                setup.log(f"6/6 {setting}, noise {sigma}, seed {seed}")
                out = fit(setup, data, k, TANGENT, lr=lr, seed=seed, index=index, steps=c.dp_steps, start=start,
                          dp=dp, delta=c.dp_delta)
                results.setdefault((setting, sigma), []).append((out.epsilon, acc(seed, out.tangent)))
                setup.results.log({"section": "dp", "setting": setting, "noise": sigma, "seed": seed,
                                   "epsilon": out.epsilon, "test_acc": results[setting, sigma][-1][1]})
    upper = setup.summaries["taft"]["test"][f"{k}/{TANGENT}"]
    rows = [[setting, sigma, f"{runs[0][0]:.3g}", measure.pm([a for _, a in runs])]
            for (setting, sigma), runs in results.items()]
    rows += [["public data only (no privacy cost)", "-", "0", measure.pm(public_only)],
             ["not private, all data (section 1)", "0", "inf", measure.pm(upper)]]
    name = method_name(k, TANGENT, data.task.depth)
    batch = min(c.batch_size, data.n_train)
    text = f"""## 6. Differential privacy, private and mixed

DP-SGD (`tangent.DPSGD`: per-example gradients clipped to norm {c.dp_clip}, Gaussian noise of std
sigma x {c.dp_clip}) on the tangent vector of {name}, {c.dp_steps} steps of {batch} examples drawn
without replacement, learning rate {lr:g} (chosen without privacy in section 1; choosing it on
private data would spend privacy too). Epsilon at delta = {c.dp_delta} is the RDP accountant's
(`dp-accounting`) for what ran: fixed-size batches sampled without replacement (replace-one
neighbours, sensitivity 2C). Mixed (AdaMix's setting): {100 * c.public_fraction:g}% of the training set
is public and adapts the model without privacy first; DP-SGD then continues on the other examples
(epsilon counts those). Mean ± std over {c.seeds} seeds (epsilon does not depend on the seed).

{markdown_table(["setting", "noise multiplier", "epsilon", "test accuracy"], rows)}"""
    series = {}
    for setting in (PRIVATE, MIXED):
        pts = sorted((runs[0][0], float(np.mean([a for _, a in runs])))
                     for (s, _), runs in results.items() if s == setting)
        series[setting] = ([p[0] for p in pts], [p[1] for p in pts])
    xs = sorted(x for s in series.values() for x in s[0])
    series["not private (upper bound)"] = ([xs[0], xs[-1]], [float(np.mean(upper))] * 2)
    series["public data only"] = ([xs[0], xs[-1]], [float(np.mean(public_only))] * 2)
    setup.results.plot("dp", [{"title": f"DP-SGD, {name}", "xlabel": "epsilon", "ylabel": "test accuracy",
                               "logx": True, "series": series}])
    return text, {}
