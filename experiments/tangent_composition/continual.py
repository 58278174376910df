"""Section 4: IntCL against sequential fine-tuning with the same replay buffer and against TMC,
class-incremental: accuracy over the classes seen after each task, and forgetting."""

from __future__ import annotations

import jax
import numpy as np

import tangent
from experiments.harness import markdown_table
from experiments.tangent_composition import measure
from experiments.tangent_composition.training import NONLINEAR, TANGENT, Setup, chunk, evaluate, fit_components

INTCL, SEQUENTIAL, TMC = "IntCL", "sequential FT + replay", "TMC (no replay)"


def task_matrix(logits_after: list[np.ndarray], labels: np.ndarray, tasks: list) -> np.ndarray:
    """``a[t, j]``: accuracy on task j's test examples after task t (j <= t), each classified among
    the classes seen by then (nan for j > t). ``logits_after[t]``: the logits after task t of
    the test examples of the classes seen by then (``seen_examples(labels, tasks, t)``)."""
    T = len(tasks)
    a = np.full((T, T), np.nan)
    for t, logits in enumerate(logits_after):
        seen = sorted(sum(tasks[:t + 1], []))
        seen_labels = labels[seen_examples(labels, tasks, t)]
        for j in range(t + 1):
            mask = np.isin(seen_labels, tasks[j])
            a[t, j] = measure.accuracy(logits[mask], seen_labels[mask], seen)
    return a


def seen_examples(labels: np.ndarray, tasks: list, t: int) -> np.ndarray:
    """Indices of the test examples of the classes of tasks 0 .. t."""
    return np.flatnonzero(np.isin(labels, sum(tasks[:t + 1], [])))


def summarize(a: np.ndarray, labels: np.ndarray, tasks: list) -> dict:
    """Accuracy over the seen classes' test examples after each task (weighted by examples), and
    forgetting: the mean over tasks j < T of (best accuracy on j before the end - final accuracy)."""
    sizes = np.array([np.isin(labels, t).sum() for t in tasks])
    seen_acc = [float(np.sum(a[t, :t + 1] * sizes[:t + 1]) / sizes[:t + 1].sum()) for t in range(len(tasks))]
    T = len(tasks)
    drops = [np.nanmax(a[j:T - 1, j]) - a[T - 1, j] for j in range(T - 1)]
    return {"seen_acc": seen_acc, "final": seen_acc[-1], "forgetting": float(np.mean(drops)) if drops else 0.0}


def run(setup: Setup) -> tuple[str, dict]:
    c, k, data = setup.config, setup.config.k, setup.classes
    num = max(c.class_tasks)
    lrs = setup.summaries["tmc"]["class_lr"]
    test_h, labels = data.h(k, "test"), data.labels("test")
    results: dict[tuple[str, int], list[dict]] = {}
    for seed in setup.seeds:
        index, tasks = measure.class_tasks(data.labels(), data.task.num_classes, num, seed)
        steps = data.steps_for(index.shape[1])
        if ("class", num, seed) not in setup.cache:
            setup.log(f"4/6 TMC components of the {num} tasks, seed {seed}")
            setup.cache["class", num, seed] = {TANGENT: fit_components(setup, data, k, TANGENT, lr=lrs[TANGENT],
                                                                       seed=seed, index=index)}
        vectors = setup.cache["class", num, seed][TANGENT]
        members = evaluate(data, k, TANGENT, seed, vectors, stacked=True)  # composition = their mean
        after = [members[:t + 1].mean(0)[seen_examples(labels, tasks, t)] for t in range(num)]
        results.setdefault((TMC, 0), []).append(summarize(task_matrix(after, labels, tasks), labels, tasks))
        task_data = [(tuple(a[i] for a in data.h(k)), data.labels()[i]) for i in index]
        for buffer in c.buffer_sizes:
            for method, kind in ((INTCL, TANGENT), (SEQUENTIAL, NONLINEAR)):
                setup.log(f"4/6 {method}, buffer {buffer}, seed {seed}")
                out = tangent.fit_intcl(data.model(k, kind, seed), task_data, steps=steps, buffer_size=buffer,
                                        batch_size=c.batch_size, key=jax.random.key(seed), seed=seed,
                                        precomputed=True, log_every=chunk(steps), progress=c.progress,
                                        **data.recipe.replace(learning_rate=lrs[kind]).fit_kwargs(steps))
                after = [measure.logits(m, d, tuple(a[seen_examples(labels, tasks, t)] for a in test_h))
                         for t, (m, d) in enumerate(zip(out.models, out.steps))]
                summary = summarize(task_matrix(after, labels, tasks), labels, tasks)
                results.setdefault((method, buffer), []).append(summary)
                setup.results.log({"section": "intcl", "method": method, "buffer": buffer, "seed": seed,
                                   "tasks": tasks, **summary})
    rows, series = [], {}
    for (method, buffer), runs in results.items():
        rows.append([method, buffer, measure.pm([r["final"] for r in runs]),
                     measure.pm([r["forgetting"] for r in runs]),
                     " → ".join(f"{np.mean([r['seen_acc'][t] for r in runs]):.3f}" for t in range(num))])
        series[f"{method}" + (f", buffer {buffer}" if method != TMC else "")] = (
            list(range(1, num + 1)), [float(np.mean([r["seen_acc"][t] for r in runs])) for t in range(num)])
    paragon = setup.summaries["tmc"]["class_paragon"]
    n = data.n_train
    text = f"""## 4. Continual learning: IntCL vs sequential fine-tuning vs TMC

{data.task.name.split(' on ')[1]}'s classes arrive as {num} tasks (the class-incremental tasks of
section 2, same seeds), each trained for as many epochs as one model on all data. IntCL
(`tangent.fit_intcl`): each task trains a tangent step around the current model, re-linearized at
the integrated point, on the task's examples and a replay buffer (reservoir sampling; half of each
batch's sampling weight on the buffer). Sequential FT + replay: the same loop, buffer and batches on
the non-linear network (fine-tuning continues from the previous task's weights). TMC: one tangent
component per task, trained without replay, composed (scored through the mean of the components'
tangent logits, equal by linearity: section 2). Buffer sizes are
{', '.join(f'{b} ({100 * b / n:.1f}%)' for b in c.buffer_sizes)} of the {n} training examples.
Accuracy after each task: on the test examples of the classes seen so far, classified among those
classes (our choice); final: after the last task, on all classes. Forgetting: mean over tasks
before the last of (best accuracy on the task before the end - final accuracy on it). Mean ± std
over {c.seeds} seeds. Paragon (one model on all tasks at once): tangent
{measure.pm(paragon[TANGENT])}, non-linear {measure.pm(paragon[NONLINEAR])}.

{markdown_table(["method", "buffer", "final accuracy", "forgetting",
                 "accuracy over seen classes after each task"], rows)}"""
    setup.results.plot("intcl", [{"title": f"class-incremental, {num} tasks", "xlabel": "tasks seen",
                                  "ylabel": "test accuracy over seen classes", "series": series}])
    return text, {}
