"""The four sections of the experiment, each a Markdown table (results.md) and plots."""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import tangent
from experiments.harness import Results, markdown_table
from experiments.tangent_composition import measure
from experiments.tangent_composition.config import Config, taft_ks, validate
from experiments.tangent_composition.task import Nonlinear, Task, cache_features, load_task, taft_model

TANGENT, NONLINEAR, PROBE = "tangent", "non-linear", "probe"


@dataclasses.dataclass
class Setup:
    """What the sections share: the task, features cached at each cut, one model per (k, kind)
    (reused, so that compiled steps are reused), the two optimizers and the results folder."""

    config: Config
    task: Task
    train: dict[int, tuple]
    test: dict[int, tuple]
    models: dict[tuple[int, str], tangent.TangentModel]
    optimizers: dict[str, optax.GradientTransformation]
    results: Results
    sections: list[str] = dataclasses.field(default_factory=list)
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:5.0f} s] {message}", flush=True)

    def features(self, k: int, split: str = "train") -> tuple:
        return (self.train if split == "train" else self.test)[self.task.cut(k)]

    def write(self, section: str) -> None:
        """Add a Markdown section and rewrite results.md (partial results survive a crash)."""
        self.sections.append(section)
        self.results.write_markdown(self.sections)


def blocks_name(k: int, depth: int) -> str:
    return "all" if k == depth else str(k)


def method_name(k: int, kind: str, depth: int) -> str:
    if k == 0:
        return "linear probe (head)"
    return f"TAFT-{blocks_name(k, depth)}" if kind == TANGENT else f"non-linear FT-{blocks_name(k, depth)}"


def _fit_kwargs(setup: Setup, k: int, kind: str, n: int) -> dict:
    """Optimizer (the probe's for k = 0), loss and batch size (at most the n examples)."""
    c = setup.config
    return dict(optimizer=setup.optimizers[PROBE if k == 0 else kind], loss=c.loss,
                batch_size=min(c.batch_size, n))


def _divisor(steps: int) -> int:
    """The largest divisor of ``steps`` that is at most steps / 10: the chunk of steps per call."""
    return next(c for c in range(max(1, steps // 10), 0, -1) if steps % c == 0)


def timed(train: Callable[[int, bool], tangent.FitResult], steps: int, progress: bool):
    """``train(steps, progress)`` after a first ``train(chunk, False)`` that compiles the training
    loop (both run ``chunk`` steps per call, so the timed run reuses it).
    Returns (result, training seconds, compilation seconds)."""
    chunk = _divisor(steps)
    _, warm_s = measure.seconds(lambda: train(chunk, False).losses)
    result, train_s = measure.seconds(lambda: train(steps, progress))
    return result, train_s, max(0.0, warm_s - chunk * train_s / steps)


def single_trainer(setup: Setup, k: int, kind: str) -> Callable[[int, bool], tangent.FitResult]:
    """``train(steps, progress)``: one model (TAFT-k, or non-linear FT of the same blocks) on all
    training data, ``steps / 10`` steps per compiled call."""
    c, model = setup.config, setup.models[k, kind]
    h, y = setup.features(k), setup.task.train_labels
    return lambda steps, progress: tangent.fit(
        model, h, y, steps=steps, key=jax.random.key(c.seed), log_every=_divisor(c.steps),
        progress=progress, **_fit_kwargs(setup, k, kind, len(y)))


def shard_steps(config: Config, shard_size: int, train_size: int) -> int:
    """Steps of a shard model: as many epochs as ``config.steps`` on the whole training set."""
    return max(1, round(config.steps * shard_size / train_size))


def shard_trainer(setup: Setup, k: int, kind: str, index: np.ndarray, ids) -> tuple[Callable, int]:
    """``(train(steps, progress), steps)``: components of TAFT-k (or non-linear shard models)
    trained at once by ``tangent.fit_components`` on the shards ``index`` (K, n). ``ids`` (K,)
    name the shards, whose keys ``fold_in(key(seed + 1), id)`` do not depend on which other shards
    are trained. ``steps = steps * n / training size``: as many epochs as one model on all data."""
    c, model = setup.config, setup.models[k, kind]
    h, y = setup.features(k), setup.task.train_labels
    steps = shard_steps(c, index.shape[1], len(y))
    base = jax.random.key(c.seed + 1)
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(ids))
    train = lambda n, progress: tangent.fit_components(
        model, tuple(a[index] for a in h), y[index], steps=n, keys=keys, log_every=_divisor(steps),
        progress=progress, **_fit_kwargs(setup, k, kind, index.shape[1]))
    return train, steps


def fit_shards(setup: Setup, k: int, kind: str, index: np.ndarray, ids):
    """The stacked (K, ...) vectors of ``shard_trainer``."""
    train, steps = shard_trainer(setup, k, kind, index, ids)
    return train(steps, setup.config.progress).tangent


def fit_single(setup: Setup, k: int, kind: str) -> dict:
    """One model on all data (``single_trainer``): vector, losses, test accuracy and cost
    (``ms_per_step`` without compilation; ``gflops_per_step``: XLA's count for loss + gradient)."""
    c, model = setup.config, setup.models[k, kind]
    h, y = setup.features(k), setup.task.train_labels
    result, train_s, compile_s = timed(single_trainer(setup, k, kind), c.steps, c.progress)
    loss = tangent.losses.get(c.loss)
    grad = jax.jit(jax.value_and_grad(lambda d, h, y: loss(model.apply_features(d, h), y)))
    batch = min(c.batch_size, len(y))
    step = grad.lower(model.zeros(), tuple(a[:batch] for a in h), jnp.asarray(y[:batch]))
    test_logits = measure.logits(model, result.tangent, setup.features(k, "test"))
    return {"tangent": result.tangent, "losses": result.losses,
            "test_acc": measure.accuracy(test_logits, setup.task.test_labels),
            "final_loss": float(np.mean(result.losses[-max(1, c.steps // 10):])),
            "ms_per_step": 1000 * train_s / c.steps, "train_s": train_s, "compile_s": compile_s,
            "gflops_per_step": measure.gflops(step),
            "params": sum(int(np.prod(a.shape)) for a in model.primal().values())}


# ----------------------------------------------------------------------------- 1. TAFT-k

def taft_section(setup: Setup, ks: list[int]) -> dict:
    """Linear probe, TAFT-k and non-linear FT-k for every k: accuracy and training cost."""
    task, singles, rows = setup.task, {}, []
    for k in [0] + ks:
        for kind in ((TANGENT,) if k == 0 else (TANGENT, NONLINEAR)):
            setup.log(f"1/4 {method_name(k, kind, task.depth)}")
            r = singles[k, kind] = fit_single(setup, k, kind)
            setup.results.log({"section": "taft", "method": method_name(k, kind, task.depth), "k": k,
                               "kind": kind, **{n: v for n, v in r.items() if n not in ("tangent", "losses")}})
            rows.append([method_name(k, kind, task.depth), blocks_name(k, task.depth), f"{r['params']:,}",
                         r["test_acc"], r["final_loss"], r["ms_per_step"], f"{r['gflops_per_step']:.3g}",
                         r["train_s"], r["compile_s"]])
    c = setup.config
    table = markdown_table(["method", "blocks trained", "parameters", "test acc", "final train loss",
                            "ms / step", "GFLOP / step", "train s", "compile s"], rows)
    setup.write(f"""## 1. TAFT-k vs non-linear fine-tuning vs linear probe

{task.name}: {len(task.train_labels)} training and {len(task.test_labels)} test examples. Every
model starts from the same pretrained weights and new head, and takes {c.steps} Adam steps of
{c.batch_size} examples ({c.loss}; learning rate {c.learning_rate} for TAFT,
{c.nonlinear_learning_rate} for non-linear fine-tuning, {c.probe_learning_rate} for the probe).
Features before the first trained block are cached once. ms / step: training loop after
compilation; GFLOP / step: XLA's count for one loss and gradient.

{table}""")
    kinds = {TANGENT: "tangent (TAFT-k)", NONLINEAR: "non-linear FT-k"}
    window = max(1, c.steps // 20)
    smooth = lambda x: np.convolve(x, np.ones(window) / window, mode="valid")
    at = lambda kind, field: ([0] + ks, [singles[k, TANGENT if k == 0 else kind][field] for k in [0] + ks])
    setup.results.plot("taft", [
        {"title": "test accuracy", "xlabel": "blocks trained (0: linear probe)",
         "series": {kinds[kind]: at(kind, "test_acc") for kind in kinds}},
        {"title": "training step", "xlabel": "blocks trained", "ylabel": "ms / step", "logy": True,
         "series": {kinds[kind]: at(kind, "ms_per_step") for kind in kinds}},
        {"title": f"training loss (mean of {window} steps)", "xlabel": "step", "logy": True,
         "series": {method_name(k, kind, task.depth): (np.arange(window - 1, c.steps), smooth(r["losses"]))
                    for (k, kind), r in singles.items()}}])
    return singles


# ----------------------------------------------------------------------------- 2. TMC

def _curve_points(config: Config, num: int) -> list[int]:
    return sorted({1, num} | {s for s in config.shards if s <= num})


def mean_of_first(stacked, n: int) -> tangent.TangentVector:
    """The average of the first n of K stacked (K, ...) vectors: the composition of n tangent
    components, or the weight soup of n non-linear models."""
    return tangent.compose(tangent.unstack(jax.tree.map(lambda a: a[:n], stacked)))


def tmc_curve(setup: Setup, vectors, nl_vectors, points: list[int]) -> dict[str, list[float]]:
    """Test accuracy of the TMC composition, the non-linear ensemble (mean logits) and the soup
    of the first n components, for n in ``points``."""
    k = setup.config.k
    model, nonlinear = setup.models[k, TANGENT], setup.models[k, NONLINEAR]
    test_h, labels = setup.features(k, "test"), setup.task.test_labels
    nl_logits = measure.logits(nonlinear, nl_vectors, test_h, stacked=True)
    acc = lambda x: measure.accuracy(x, labels)
    return {"TMC composition": [acc(measure.logits(model, mean_of_first(vectors, n), test_h)) for n in points],
            "non-linear ensemble": [acc(nl_logits[:n].mean(0)) for n in points],
            "non-linear soup": [acc(measure.logits(nonlinear, mean_of_first(nl_vectors, n), test_h))
                                for n in points]}


def composition_gap(model: tangent.TangentModel, vectors, features: tuple) -> float:
    """max |f_lin(x; mean_i d_i) - mean_i f_lin(x; d_i)| (zero up to rounding: linearity)."""
    composed = measure.logits(model, mean_of_first(vectors, len(jax.tree.leaves(vectors)[0])), features)
    return float(np.max(np.abs(composed - measure.logits(model, vectors, features, stacked=True).mean(0))))


def tmc_section(setup: Setup, singles: dict) -> dict:
    """Tangent components per shard, composed, against the paragon, the non-linear ensemble and
    the soup; accuracy as components are added, and inference cost."""
    c, task, k = setup.config, setup.task, setup.config.k
    check = tuple(a[:c.eval_batch] for a in setup.features(k, "test"))
    trained, rows, curves = {}, [], {}
    for split in c.splits:
        for num in c.shards:
            index = measure.shard_indices(task.train_labels, num, split, c.seed)
            setup.log(f"2/4 {split}-incremental, {num} shards: tangent components, non-linear shard models")
            vectors = fit_shards(setup, k, TANGENT, index, np.arange(num))
            nl_vectors = fit_shards(setup, k, NONLINEAR, index, np.arange(num))
            trained[split, num] = {"index": index, TANGENT: vectors, NONLINEAR: nl_vectors}
            points = _curve_points(c, num)
            curve = curves[split, num] = tmc_curve(setup, vectors, nl_vectors, points)
            gap = composition_gap(setup.models[k, TANGENT], vectors, check)
            record = {"split": split, "shards": num, "paragon_tangent": singles[k, TANGENT]["test_acc"],
                      "paragon_nonlinear": singles[k, NONLINEAR]["test_acc"],
                      **{name: accs[-1] for name, accs in curve.items()},
                      "one_shard_tangent": curve["TMC composition"][0],
                      "one_shard_nonlinear": curve["non-linear ensemble"][0],
                      "composition_vs_ensemble_max_abs": gap}
            setup.results.log({"section": "tmc", **record, "curve_n": points, "curve": curve})
            rows.append([split, num, record["paragon_tangent"], record["paragon_nonlinear"],
                         record["TMC composition"], record["non-linear ensemble"], record["non-linear soup"],
                         record["one_shard_tangent"], record["one_shard_nonlinear"],
                         f"{100 * (record['TMC composition'] - record['non-linear ensemble']):+.1f}",
                         f"{gap:.1e}"])
    cost_rows, costs = tmc_cost(setup, trained[c.splits[0], max(c.shards)][TANGENT],
                                trained[c.splits[0], max(c.shards)][NONLINEAR])
    name = method_name(k, TANGENT, task.depth)
    n = len(task.train_labels)
    steps = ", ".join(f"{shard_steps(c, n // num, n)} for {num} shards" for num in c.shards)
    setup.write(f"""## 2. Tangent model composition (TMC)

The training set is cut into shards, data-incremental (random) or class-incremental (sorted by
class), one component per shard; all components train at once (`tangent.fit_components`, vmap
over components) for {c.steps} x shard size / training size steps ({steps}), i.e. as many
epochs as one model on all data, with the learning rates of section 1 (chosen for single models:
with so few steps the comparison with the ensemble is sensitive to them). TMC composition: the
{name} components averaged into one tangent vector. Paragons: one {name} (tangent) / one
non-linear model on all data (section 1). Non-linear ensemble: the average of the outputs
(logits) of the non-linear shard models; soup: their weights averaged. One shard: the first
component alone. TMC - ensemble in points of accuracy; abs(composition - ensemble): max abs
difference between the composed model's logits and the average of its components' logits
(linearity).{_few_classes_note(c, task)}

{markdown_table(["split", "shards", "paragon (tangent)", "paragon (non-linear)", "TMC composition",
                 "non-linear ensemble", "non-linear soup", "one shard (tangent)", "one shard (non-linear)",
                 "TMC - ensemble", "abs(composition - ensemble)"], rows)}

Inference cost of composing n components ({c.splits[0]}-incremental, {max(c.shards)} shards): one
batch of {c.eval_batch} test examples from the raw inputs, the frozen blocks shared by the
ensemble's members; compiled GFLOPs (XLA) and median wall time.

{markdown_table(["components n", "TMC GFLOP", "TMC ms", "ensemble GFLOP", "ensemble ms", "soup GFLOP",
                 "soup ms"], cost_rows)}""")
    panels = []
    for (split, num), curve in curves.items():
        if num == max(c.shards):
            points = _curve_points(c, num)
            paragon = (points, [singles[k, TANGENT]["test_acc"]] * len(points))
            panels.append({"title": f"{split}-incremental, {num} shards", "xlabel": "components composed",
                           "ylabel": "test accuracy",
                           "series": {**{n: (points, a) for n, a in curve.items()}, "paragon (tangent)": paragon}})
    panels.append({"title": "inference cost", "xlabel": "components", "ylabel": "GFLOP",
                   "series": {n: (costs["n"], costs[n]) for n in ("TMC", "ensemble", "soup")}})
    setup.results.plot("tmc", panels)
    return trained


def _few_classes_note(config: Config, task: Task) -> str:
    if "class" not in config.splits or max(config.shards) <= task.num_classes:
        return ""
    return (f" With more shards than classes ({task.num_classes}), a class-incremental shard holds one or"
            " two classes: its model learns little to tell classes apart, and the first n of K components"
            " have seen only the first classes.")


def tmc_cost(setup: Setup, vectors, nl_vectors) -> tuple[list, dict]:
    """Cost rows and GFLOP series for n = 1, shards..: composition and soup are one model each;
    the ensemble runs n fine-tuned parts on shared frozen features."""
    c, k = setup.config, setup.config.k
    raw = taft_model(setup.task, k)
    raw_nonlinear = Nonlinear.of(raw)
    batch = tuple(a[:c.eval_batch] for a in setup.task.test)
    call = lambda m, d, *x: m(d, *x)
    points = _curve_points(c, max(c.shards))
    composition = measure.inference_cost(call, raw, mean_of_first(vectors, points[-1]), *batch, repeats=c.repeats)
    soup = measure.inference_cost(call, raw_nonlinear, mean_of_first(nl_vectors, points[-1]), *batch,
                                  repeats=c.repeats)
    rows, series = [], {"n": points, "TMC": [], "ensemble": [], "soup": []}
    for n in points:
        ensemble = measure.inference_cost(measure.ensemble_logits, raw_nonlinear,
                                          jax.tree.map(lambda a: a[:n], nl_vectors), *batch, repeats=c.repeats)
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


def forgetting_section(setup: Setup, trained: dict) -> None:
    """Remove one shard's component: exact (equal to never having added it) and instant, against
    retraining the remaining components from scratch."""
    c, k, num = setup.config, setup.config.k, setup.config.shards[0]
    model, test_h, labels = setup.models[k, TANGENT], setup.features(k, "test"), setup.task.test_labels
    if ("data", num) not in trained:
        index = measure.shard_indices(setup.task.train_labels, num, "data", c.seed)
        trained["data", num] = {"index": index, TANGENT: fit_shards(setup, k, TANGENT, index, np.arange(num))}
    index, vectors = trained["data", num]["index"], tangent.unstack(trained["data", num][TANGENT])
    setup.log(f"3/4 forgetting shard {c.forget} of {num}; retraining the other {num - 1}")
    out = forget(model, vectors, c.forget, test_h)
    if out["max_abs_diff"] != 0.0:
        raise AssertionError(f"forgetting is not exact: max abs diff {out['max_abs_diff']}")
    keep = np.array([i for i in range(num) if i != c.forget])
    train, steps = shard_trainer(setup, k, TANGENT, index[keep], keep)
    retrained, retrain_s, compile_s = timed(train, steps, c.progress)
    retrained_logits = measure.logits(model, mean_of_first(retrained.tangent, num - 1), test_h)
    retrain_diff = float(np.max(np.abs(out["logits"] - retrained_logits)))
    shard_h = tuple(a[index[c.forget]] for a in setup.features(k))
    shard_y = setup.task.train_labels[index[c.forget]]
    full = tangent.compose(vectors)
    record = {"shards": num, "forgotten": c.forget, "max_abs_diff_never_added": out["max_abs_diff"],
              "max_abs_diff_retrained": retrain_diff, "forget_ms": 1000 * out["forget_s"], "retrain_s": retrain_s,
              "retrain_compile_s": compile_s,
              "test_acc_before": measure.accuracy(measure.logits(model, full, test_h), labels),
              "test_acc_after": measure.accuracy(out["logits"], labels),
              "test_acc_retrained": measure.accuracy(retrained_logits, labels),
              "shard_acc_before": measure.accuracy(measure.logits(model, full, shard_h), shard_y),
              "shard_acc_after": measure.accuracy(measure.logits(model, out["composition"].vector(), shard_h),
                                                  shard_y)}
    setup.results.log({"section": "forgetting", **record})
    setup.write(f"""## 3. Forgetting

Shard {c.forget} of the data-incremental split into {num} shards is forgotten by removing its
component from the composition (`tangent.Composition.remove`). Exactness: the logits on the test set
after forgetting against a composition that never held the component (asserted equal) and against
the other {num - 1} components retrained from scratch with the same per-shard seeds (different
floating-point batching). Retrain s: training time of the {num - 1} components (all at once),
without the compilation (compile s). Shard acc: training accuracy on the forgotten shard's own
examples.

{markdown_table(["max abs diff (never added)", "max abs diff (retrained)", "forget ms", "retrain s",
                 "compile s", "test acc before", "test acc after", "test acc retrained", "shard acc before",
                 "shard acc after"],
                [[f"{record['max_abs_diff_never_added']:.1e}", f"{retrain_diff:.1e}", record["forget_ms"],
                  retrain_s, compile_s, *(record[key] for key in (
                      "test_acc_before", "test_acc_after", "test_acc_retrained", "shard_acc_before",
                      "shard_acc_after"))]])}""")


# ----------------------------------------------------------------------------- 4. privacy

def dp_section(setup: Setup, singles: dict) -> None:
    """DP-SGD on the TAFT-k tangent vector: test accuracy against epsilon at fixed delta."""
    c, k, task = setup.config, setup.config.dp_blocks, setup.task
    model, h, y = setup.models[k, TANGENT], setup.features(k), task.train_labels
    rows, eps, accs = [], [], []
    lr = c.probe_learning_rate if k == 0 else c.learning_rate
    for sigma in c.dp_noise:
        setup.log(f"4/4 DP-SGD, {method_name(k, TANGENT, task.depth)}, noise multiplier {sigma}")
        result = tangent.fit(model, h, y, steps=c.steps, key=jax.random.key(c.seed), delta=c.dp_delta,
                             dp=tangent.DPSGD(c.dp_clip, sigma), log_every=_divisor(c.steps),
                             progress=c.progress, **_fit_kwargs(setup, k, TANGENT, len(y)))
        acc = measure.accuracy(measure.logits(model, result.tangent, setup.features(k, "test")), task.test_labels)
        setup.results.log({"section": "dp", "k": k, "noise": sigma, "epsilon": result.epsilon, "test_acc": acc})
        rows.append([sigma, result.epsilon, acc])
        eps.append(result.epsilon)
        accs.append(acc)
    baseline = singles[k, TANGENT]["test_acc"]
    rows.append(["0 (not private)", "inf", baseline])
    name = method_name(k, TANGENT, task.depth)
    setup.write(f"""## 4. Differential privacy

DP-SGD (`tangent.DPSGD`: per-example gradients clipped to norm {c.dp_clip}, Gaussian noise of std
sigma x {c.dp_clip}) on the tangent vector of {name} ({singles[k, TANGENT]['params']:,} parameters),
{c.steps} Adam steps (learning rate {lr}) of {min(c.batch_size, len(y))} of {len(y)} examples; epsilon
at delta = {c.dp_delta} from the RDP accountant (`dp-accounting`, Poisson sampling assumed).

{markdown_table(["noise multiplier", "epsilon", "test acc"], rows)}""")
    setup.results.plot("dp", [{"title": f"DP-SGD, {name}", "xlabel": "epsilon", "ylabel": "test accuracy",
                               "logx": True, "series": {"DP-SGD": (eps, accs),
                                                        "not private": (eps, [baseline] * len(eps))}}])


# ----------------------------------------------------------------------------- run

def results_folder(config: Config) -> pathlib.Path:
    if config.out is not None:
        return pathlib.Path(config.out)
    return pathlib.Path("runs/tangent_composition") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def setup(config: Config) -> Setup:
    """Load the task, cache its features at every cut the sections need, build the models."""
    start = time.perf_counter()
    config = validate(config)
    task = load_task(config)
    ks = taft_ks(config, task.depth)
    for name in ("k", "dp_blocks"):
        if getattr(config, name) > task.depth:
            raise ValueError(f"--{name}={getattr(config, name)} exceeds the backbone's {task.depth} blocks")
    results = Results(results_folder(config))
    results.write_config(config)
    all_ks = sorted({0, config.k, config.dp_blocks, *ks})
    cuts = {task.cut(k) for k in all_ks}
    print(f"{task.name}: caching the features entering blocks {sorted(cuts)}", flush=True)
    models = {}
    for k in all_ks:
        models[k, TANGENT] = taft_model(task, k, source=task.cut(k))
        models[k, NONLINEAR] = Nonlinear.of(models[k, TANGENT])
    optimizers = {TANGENT: optax.adam(config.learning_rate), NONLINEAR: optax.adam(config.nonlinear_learning_rate),
                  PROBE: optax.adam(config.probe_learning_rate)}
    return Setup(config, task, cache_features(task, task.train, cuts), cache_features(task, task.test, cuts),
                 models, optimizers, results, start=start)


def run(config: Config) -> pathlib.Path:
    """Run all four sections; returns the results folder."""
    s = setup(config)
    ks = taft_ks(s.config, s.task.depth)
    singles = taft_section(s, sorted(set(ks) | {s.config.k, s.config.dp_blocks} - {0}))
    trained = tmc_section(s, singles)
    forgetting_section(s, trained)
    dp_section(s, singles)
    s.log(f"results: {s.results.path / 'results.md'}")
    return s.results.path
