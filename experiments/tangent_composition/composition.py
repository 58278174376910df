"""Sections 2 and 3: tangent model composition (data-, class- and task-incremental) against the
paragon, the non-linear ensemble and the weight soup, with inference cost; exact forgetting."""

from __future__ import annotations

import time

import jax
import numpy as np

import tangent
from experiments.harness import markdown_table
from experiments.tangent_composition import measure
from experiments.tangent_composition.finetuning import method_name
from experiments.tangent_composition.task import Nonlinear, taft_model
from experiments.tangent_composition.training import (NONLINEAR, TANGENT, Setup, TaskData, choose, evaluate,
                                                      fit_components)

METHODS = ("TMC composition", "non-linear ensemble", "non-linear soup")


def mean_of_first(stacked, n: int) -> tangent.TangentVector:
    """The average of the first n of K stacked (K, ...) vectors: the composition of n tangent
    components, or the weight soup of n non-linear models."""
    return tangent.compose(tangent.unstack(jax.tree.map(lambda a: a[:n], stacked)))


def composed_logits(data: TaskData, k: int, seed: int, vectors, nl_vectors, num: int) -> tuple[list[dict], float]:
    """Test logits of the first n = 1 .. num components: TMC, the non-linear ensemble (mean of the
    members' logits) and the soup (mean weights, evaluated at n = num; at n = 1 it is the first
    member; None between). TMC of n < num is the mean of its members' tangent logits, which is
    the composed model's output by linearity; at n = num the composed vector itself is evaluated,
    and the max abs gap to the mean of the members' logits is returned (0 up to rounding)."""
    members = evaluate(data, k, NONLINEAR, seed, nl_vectors, stacked=True)
    tangent_members = evaluate(data, k, TANGENT, seed, vectors, stacked=True)
    composed = evaluate(data, k, TANGENT, seed, mean_of_first(vectors, num))
    soup = evaluate(data, k, NONLINEAR, seed, mean_of_first(nl_vectors, num))
    out = [{"TMC composition": composed if n == num else tangent_members[:n].mean(0),
            "non-linear ensemble": members[:n].mean(0),
            "non-linear soup": soup if n == num else members[0] if n == 1 else None}
           for n in range(1, num + 1)]
    return out, float(np.max(np.abs(composed - tangent_members.mean(0))))


def paragons(setup: Setup, data: TaskData, name: str, summary: dict | None) -> dict:
    """Test accuracies (per seed) and rates of one tangent / non-linear model on all of ``data``:
    section 1's for --dataset, chosen on validation here for --class_dataset."""
    k = setup.config.k
    if summary is not None:
        return {kind: {"test": summary["test"][f"{k}/{kind}"], "lr": summary["lr"][f"{k}/{kind if k else 'probe'}"]}
                for kind in (TANGENT, NONLINEAR)}
    return {kind: {key: out[key] for key in ("test", "lr")}
            for kind in (TANGENT, NONLINEAR)
            for out in [choose(setup, data, k, kind, f"2/6 {name} paragon, {method_name(k, kind, data.task.depth)}")]}


def run(setup: Setup) -> tuple[str, dict]:
    c, k = setup.config, setup.config.k
    main, classes = setup.main, setup.classes
    para_main = paragons(setup, main, "data-incremental", setup.summaries["taft"])
    para_class = para_main if classes is main else paragons(setup, classes, "class-incremental", None)
    lr = lambda para: {kind: para[kind]["lr"] for kind in (TANGENT, NONLINEAR)}
    rows, curves, records, summary = [], {}, [], {"class_lr": lr(para_class), "class_paragon": {}}
    settings = (("data", main, para_main, c.shards), ("class", classes, para_class, c.class_tasks))
    for split, data, para, counts in settings:
        for num in counts:
            per_seed = {m: [] for m in METHODS}
            task_il, gaps, curve = {m: [] for m in METHODS}, [], {m: [] for m in METHODS}
            for seed in setup.seeds:
                setup.log(f"2/6 {split}-incremental, {num} {'shards' if split == 'data' else 'tasks'}, seed {seed}")
                if split == "data":
                    index, tasks = measure.shard_indices(data.n_train, num, seed), None
                else:
                    index, tasks = measure.class_tasks(data.labels(), data.task.num_classes, num, seed)
                vectors = fit_components(setup, data, k, TANGENT, lr=para[TANGENT]["lr"], seed=seed, index=index)
                nl = fit_components(setup, data, k, NONLINEAR, lr=para[NONLINEAR]["lr"], seed=seed, index=index)
                setup.cache[split, num, seed] = {"index": index, TANGENT: vectors, NONLINEAR: nl}
                labels = data.labels("test")
                all_logits, gap = composed_logits(data, k, seed, vectors, nl, num)
                gaps.append(gap)
                for n, logits in enumerate(all_logits, 1):
                    seen = None if tasks is None else sorted(sum(tasks[:n], []))
                    keep = slice(None) if seen is None else np.isin(labels, seen)
                    for m in (m for m in METHODS if logits[m] is not None):
                        acc = measure.accuracy(logits[m][keep], labels[keep], seen)
                        if n == num:
                            per_seed[m].append(acc)
                            if tasks is not None and min(len(t) for t in tasks) > 1:
                                task_il[m].append(measure.task_accuracy(logits[m], labels, tasks))
                        curve[m].append((seed, n, acc))
            record = {"split": split, "num": num, "paragon_tangent": para[TANGENT]["test"],
                      "paragon_nonlinear": para[NONLINEAR]["test"], **{m: per_seed[m] for m in METHODS},
                      "task_incremental": task_il, "max_abs_gap": max(gaps), "curve": curve}
            records.append(record)
            setup.results.log({"section": "tmc", **record})
            lead = [a - b for a, b in zip(per_seed["TMC composition"], per_seed["non-linear ensemble"])]
            rows.append([f"{split}-incremental", f"{num} {'shards' if split == 'data' else 'tasks'}",
                         data.task.name.split(" on ")[1],
                         measure.pm(para[TANGENT]["test"]), measure.pm(para[NONLINEAR]["test"]),
                         *(measure.pm(per_seed[m]) for m in METHODS), measure.pm([100 * x for x in lead], 1),
                         " / ".join(measure.pm(task_il[m]) for m in METHODS[:2]) if task_il[METHODS[0]] else "-",
                         f"{max(gaps):.1e}"])
            curves[split, num] = curve
        if split == "class":
            summary["class_paragon"] = {kind: para[kind]["test"] for kind in (TANGENT, NONLINEAR)}
    summary["class_curves"] = {str(num): curves["class", num]["TMC composition"] for num in c.class_tasks}
    cost_rows, costs = inference_cost(setup)
    name = method_name(k, TANGENT, main.task.depth)
    text = f"""## 2. Tangent model composition (TMC)

Data-incremental: {main.task.name.split(' on ')[1]}'s training set cut into random equal shards.
Class-incremental: {classes.task.name.split(' on ')[1]}'s classes cut into consecutive tasks (each
truncated to the smallest task's size), tested on all classes; task-incremental: the same
components, each test example classified among its own task's classes. One component per shard or
task, all trained at once (`tangent.fit_components`), for as many epochs as one model on all data,
with the learning rates chosen on validation for one model (section 1 for {main.task.name.split(' on ')[1]};
chosen the same way here for {classes.task.name.split(' on ')[1]}: {summary['class_lr']}).
TMC composition: the {name} components averaged into one tangent vector (in the plot, the
composition of the first n components is scored through the mean of their tangent logits, equal
by linearity; the last column checks it for all of them). Paragons: one {name} / one non-linear
model on all the data. Non-linear ensemble: the average of the non-linear shard models' logits;
soup: their weights averaged. TMC - ensemble in points of accuracy. Mean ± std
over {c.seeds} seeds (shards, head initialisation, minibatches). The last column is the max abs
difference between the composed model's logits and the mean of its components' logits (linearity).

{markdown_table(["split", "components", "data", "paragon (tangent)", "paragon (non-linear)", *METHODS,
                 "TMC - ensemble (points)", "task-incremental: TMC / ensemble", "abs(composition - mean)"], rows)}

Inference cost of n components (data-incremental, {max(c.shards)} shards, first seed): one batch of
{c.eval_batch} test examples from the raw inputs; the ensemble's members share the frozen blocks.
Compiled GFLOPs (XLA) and median wall time.

{markdown_table(["components n", "TMC GFLOP", "TMC ms", "ensemble GFLOP", "ensemble ms", "soup GFLOP",
                 "soup ms"], cost_rows)}"""
    panels = []
    for (split, num), curve in curves.items():
        if num == max(c.shards if split == "data" else c.class_tasks):
            series = {}
            for m in METHODS:
                points = sorted({n for _, n, _ in curve[m]})
                series[m] = (points, [np.mean([a for _, n, a in curve[m] if n == i]) for i in points])
            panels.append({"title": f"{split}-incremental, {num} components", "xlabel": "components composed",
                           "ylabel": "test accuracy (seen classes)" if split == "class" else "test accuracy",
                           "series": series})
    panels.append({"title": "inference cost", "xlabel": "components", "ylabel": "GFLOP",
                   "series": {n: (costs["n"], costs[n]) for n in ("TMC", "ensemble", "soup")}})
    setup.results.plot("tmc", panels)
    return text, summary


def inference_cost(setup: Setup) -> tuple[list, dict]:
    """Cost rows and GFLOP series for n = 1 .. shards: composition and soup are one model each;
    the ensemble runs n fine-tuned parts on shared frozen features."""
    c, k, seed = setup.config, setup.config.k, setup.seeds[0]
    trained = setup.cache["data", max(c.shards), seed]
    raw = taft_model(setup.main.task, k)
    raw_nonlinear = Nonlinear.of(raw)
    batch = tuple(a[:c.eval_batch] for a in setup.main.task.inputs["test"])
    call = lambda m, d, *x: m(d, *x)
    points = sorted({1, *c.shards})
    rows, series = [], {"n": points, "TMC": [], "ensemble": [], "soup": []}
    # One model each, whatever n: the composed vector and the averaged weights.
    composition = measure.inference_cost(call, raw, mean_of_first(trained[TANGENT], points[-1]), *batch,
                                         repeats=c.repeats)
    soup = measure.inference_cost(call, raw_nonlinear, mean_of_first(trained[NONLINEAR], points[-1]), *batch,
                                  repeats=c.repeats)
    for n in points:
        ensemble = measure.inference_cost(measure.ensemble_logits, raw_nonlinear,
                                          jax.tree.map(lambda a: a[:n], trained[NONLINEAR]), *batch, repeats=c.repeats)
        setup.results.log({"section": "tmc_cost", "n": n, "tmc": composition, "ensemble": ensemble, "soup": soup})
        rows.append([n, *(v for cost in (composition, ensemble, soup) for v in (f"{cost['gflops']:.3g}", cost["ms"]))])
        for name, cost in (("TMC", composition), ("ensemble", ensemble), ("soup", soup)):
            series[name].append(cost["gflops"])
    return rows, series


# ----------------------------------------------------------------------------- 3. forgetting

def forget(model: tangent.TangentModel, vectors: list, drop: int, features: tuple) -> dict:
    """Forget component ``drop`` of the composition of ``vectors``; compare its outputs on
    ``features`` with a composition that never held it. Returns the composition after
    forgetting, ``forget_s`` and ``max_abs_diff`` (0 when forgetting is exact)."""
    composition = tangent.Composition(model)
    for i, v in enumerate(vectors):
        composition.add(f"shard {i}", v)
    start = time.perf_counter()
    composition.remove(f"shard {drop}")
    jax.block_until_ready(composition.vector())
    forget_s = time.perf_counter() - start
    never = tangent.Composition(model)
    for i, v in enumerate(vectors):
        if i != drop:
            never.add(f"shard {i}", v)
    after = measure.logits(model, composition.vector(), features)
    diff = float(np.max(np.abs(after - measure.logits(model, never.vector(), features))))
    return {"composition": composition, "forget_s": forget_s, "max_abs_diff": diff, "logits": after}


def forgetting(setup: Setup) -> tuple[str, dict]:
    """Remove one shard's component (first seed): exact (equal to never having added it) and
    instant, against retraining the remaining components."""
    c, k, data, seed, num = setup.config, setup.config.k, setup.main, setup.seeds[0], setup.config.shards[0]
    lr = setup.summaries["taft"]["lr"][f"{k}/{TANGENT if k else 'probe'}"]
    if ("data", num, seed) not in setup.cache:
        index = measure.shard_indices(data.n_train, num, seed)
        setup.cache["data", num, seed] = {"index": index, TANGENT: fit_components(
            setup, data, k, TANGENT, lr=lr, seed=seed, index=index)}
    trained = setup.cache["data", num, seed]
    index, vectors = trained["index"], tangent.unstack(trained[TANGENT])
    model, test_h, labels = data.model(k, TANGENT, seed), data.h(k, "test"), data.labels("test")
    setup.log(f"3/6 forgetting shard {c.forget} of {num}; retraining the other {num - 1}")
    out = forget(model, vectors, c.forget, test_h)
    if out["max_abs_diff"] != 0.0:
        raise AssertionError(f"forgetting is not exact: max abs diff {out['max_abs_diff']}")
    keep = np.array([i for i in range(num) if i != c.forget])
    retrained, retrain_s = measure.seconds(lambda: fit_components(setup, data, k, TANGENT, lr=lr, seed=seed,
                                                                  index=index[keep], ids=keep))
    retrained_logits = measure.logits(model, mean_of_first(retrained, num - 1), test_h)
    shard_h = tuple(a[index[c.forget]] for a in data.h(k))
    shard_y = data.labels()[index[c.forget]]
    full = tangent.compose(vectors)
    record = {"shards": num, "forgotten": c.forget, "max_abs_diff_never_added": out["max_abs_diff"],
              "max_abs_diff_retrained": float(np.max(np.abs(out["logits"] - retrained_logits))),
              "forget_ms": 1000 * out["forget_s"], "retrain_s": retrain_s,
              "test_acc_before": measure.accuracy(measure.logits(model, full, test_h), labels),
              "test_acc_after": measure.accuracy(out["logits"], labels),
              "test_acc_retrained": measure.accuracy(retrained_logits, labels),
              "shard_acc_before": measure.accuracy(measure.logits(model, full, shard_h), shard_y),
              "shard_acc_after": measure.accuracy(measure.logits(model, out["composition"].vector(), shard_h), shard_y)}
    setup.results.log({"section": "forgetting", **record})
    text = f"""## 3. Forgetting a shard

Shard {c.forget} of the data-incremental split into {num} shards (first seed) is forgotten by removing
its component (`tangent.Composition.remove`). The logits on the test set after forgetting are compared
with a composition that never held the component (asserted equal) and with the other {num - 1}
components retrained (the components do not depend on each other: the same seeds give the same
vectors up to floating-point batching). Retrain s: training the {num - 1} components, compilation
included. Shard acc: training accuracy on the forgotten shard's examples.

{markdown_table(["max abs diff (never added)", "max abs diff (retrained)", "forget ms", "retrain s",
                 "test acc before", "test acc after", "test acc retrained", "shard acc before", "shard acc after"],
                [[f"{record['max_abs_diff_never_added']:.1e}", f"{record['max_abs_diff_retrained']:.1e}",
                  record["forget_ms"], retrain_s, *(record[key] for key in (
                      "test_acc_before", "test_acc_after", "test_acc_retrained", "shard_acc_before",
                      "shard_acc_after"))]])}"""
    return text, {}
