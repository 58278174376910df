"""Section 1: TAFT-k against non-linear fine-tuning of the same blocks and a linear probe."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import tangent
from experiments.harness import markdown_table
from experiments.tangent_composition import measure
from experiments.tangent_composition.training import NONLINEAR, TANGENT, Setup, TaskData, choose, kind_of


def blocks_name(k: int, depth: int) -> str:
    return "all" if k == depth else str(k)


def method_name(k: int, kind: str, depth: int) -> str:
    if k == 0:
        return "linear probe (head)"
    return f"TAFT-{blocks_name(k, depth)}" if kind == TANGENT else f"non-linear FT-{blocks_name(k, depth)}"


def step_gflops(data: TaskData, k: int, kind: str, batch: int) -> float:
    """XLA's FLOP count of one loss and gradient on ``batch`` examples."""
    model, loss = data.models[k, kind], data.recipe.loss_fn()
    grad = jax.jit(jax.value_and_grad(lambda d, h, y: loss(model.apply_features(d, h), y)))
    h, y = data.h(k), data.labels()
    return measure.gflops(grad.lower(model.zeros(), tuple(a[:batch] for a in h), jnp.asarray(y[:batch])))


def run(setup: Setup, ks: list[int]) -> tuple[str, dict]:
    """Every (k, kind): learning rate chosen on validation, test accuracy over seeds, cost.
    Returns the Markdown section and the summary the other sections read (rates, paragons)."""
    c, data = setup.config, setup.main
    depth, rows, summary, curves = data.task.depth, [], {"lr": {}, "test": {}}, {}
    for k in [0] + ks:
        for kind in ((TANGENT,) if k == 0 else (TANGENT, NONLINEAR)):
            name = method_name(k, kind, depth)
            out = choose(setup, data, k, kind, f"1/6 {name}")
            params = sum(int(np.prod(a.shape)) for a in data.models[k, kind].primal().values())
            gflops = step_gflops(data, k, kind, min(c.batch_size, data.n_train))
            summary["lr"][f"{k}/{kind_of(k, kind)}"] = out["lr"]
            summary["test"][f"{k}/{kind}"] = out["test"]
            setup.results.log({"section": "taft", "method": name, "k": k, "kind": kind, "lr": out["lr"],
                               "validation": out["validation"], "test_acc": out["test"], "params": params,
                               "ms_per_step": out["ms_per_step"], "gflops_per_step": gflops})
            grid = ", ".join(f"{lr}: {acc:.3f}" for lr, acc in out["validation"].items())
            rows.append([name, f"{params:,}", measure.pm(out["test"]), grid, f"{out['lr']:g}",
                         out["ms_per_step"], f"{gflops:.3g}"])
            curves[name] = out["losses"]
    majority = float(np.mean(data.labels("test") == np.bincount(data.labels()).argmax()))
    table = markdown_table(["method", "parameters trained", f"test acc ({c.seeds} seeds)",
                            "validation acc per learning rate", "chosen rate", "ms / step", "GFLOP / step"], rows)
    text = f"""## 1. TAFT-k vs non-linear fine-tuning vs linear probe

{data.task.name}: {data.n_train} training, {len(data.labels('validation'))} validation and
{len(data.labels('test'))} test examples (majority class: {majority:.3f} of the test set). Every model
starts from the pretrained weights and a new head, and takes {data.steps} steps of {c.batch_size}
examples with the recipe `{c.recipe}` ({_recipe_text(data.recipe)}). The learning rate of each
method is the best of its grid on the validation split (first seed); test accuracy is the mean ±
standard deviation over {c.seeds} seeds (head initialisation and minibatches). Features before
the first trained block are cached once. ms / step: a training step after compilation; GFLOP /
step: XLA's count for one loss and gradient.

{table}"""
    window = max(1, data.steps // 20)
    smooth = lambda x: np.convolve(x, np.ones(window) / window, mode="valid")
    at = lambda kind: ([0] + ks, [np.mean(summary["test"][f"{k}/{TANGENT if k == 0 else kind}"]) for k in [0] + ks])
    setup.results.plot("taft", [
        {"title": f"test accuracy (mean of {c.seeds} seeds)", "xlabel": "blocks trained (0: linear probe)",
         "series": {"tangent (TAFT-k)": at(TANGENT), "non-linear FT-k": at(NONLINEAR)}},
        {"title": f"training loss (first seed, mean of {window} steps)", "xlabel": "step", "logy": True,
         "series": {n: (np.arange(window - 1, len(l)), smooth(l)) for n, l in curves.items()}}])
    return text, summary


def _recipe_text(recipe: tangent.Recipe) -> str:
    loss = (f"rescaled square loss, kappa {recipe.kappa:g}, beta {recipe.beta:g}" if recipe.loss == "rsl"
            else recipe.loss)
    decay = (f", rate x{recipe.decay_factor:g} at {', '.join(f'{100 * f:g}%' for f in recipe.decay_at)} of training"
             if recipe.decay_at else "")
    return (f"{loss}; {recipe.optimizer.value}, weight decay {recipe.weight_decay:g}{decay}; "
            f"penalty {recipe.penalty:g} ||d||")
