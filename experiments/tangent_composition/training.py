"""What the sections share: a task with its cached features and models, and how one model or K
components are trained (recipe, learning rate chosen on validation, seeds)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import tangent
from experiments.harness import Results
from experiments.tangent_composition import measure
from experiments.tangent_composition.config import Config
from experiments.tangent_composition.task import Nonlinear, Task, cache_features, reseed, taft_model

TANGENT, NONLINEAR, PROBE = "tangent", "non-linear", "probe"
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class TaskData:
    """A task, its features cached at every cut the sections need (``features[split][cut]``),
    its TAFT-k models (``models[k, kind]``, built around the features at their cut), its
    recipe and the steps of one model on all its training data."""

    task: Task
    recipe: tangent.Recipe
    steps: int
    features: dict[str, dict[int, tuple]]
    models: dict[tuple[int, str], tangent.TangentModel]

    def h(self, k: int, split: str = "train") -> tuple:
        return self.features[split][self.task.cut(k)]

    def labels(self, split: str = "train") -> np.ndarray:
        return self.task.labels[split]

    @property
    def n_train(self) -> int:
        return len(self.task.labels["train"])

    def model(self, k: int, kind: str, seed: int) -> tangent.TangentModel:
        """TAFT-k (``kind`` tangent) or non-linear fine-tuning of the same blocks, with the head
        initialised from ``seed``."""
        key = (k, kind, seed)
        if key not in self.models:
            self.models[key] = reseed(self.models[k, kind], seed)
        return self.models[key]

    def steps_for(self, n: int) -> int:
        """Steps of a model on ``n`` examples: as many epochs as ``steps`` on all training data."""
        return max(1, round(self.steps * n / self.n_train))


def build(task: Task, ks: Sequence[int], recipe: tangent.Recipe, steps: int) -> TaskData:
    """Cache the features of every split at the cuts of ``ks`` and build the models."""
    cuts = {task.cut(k) for k in ks}
    features = {split: cache_features(task, task.inputs[split], cuts) for split in SPLITS}
    models = {}
    for k in sorted(set(ks)):
        models[k, TANGENT] = taft_model(task, k, source=task.cut(k))
        models[k, NONLINEAR] = Nonlinear.of(models[k, TANGENT])
    return TaskData(task, recipe, steps, features, models)


@dataclasses.dataclass
class Setup:
    """The config, the two tasks (``main``: --dataset, ``classes``: --class_dataset), the chosen
    learning rates and what one section hands to another, and the results folder."""

    config: Config
    main: TaskData
    classes: TaskData
    results: Results
    summaries: dict[str, dict] = dataclasses.field(default_factory=dict)
    cache: dict = dataclasses.field(default_factory=dict)
    start: float = dataclasses.field(default_factory=time.perf_counter)

    def log(self, message: str) -> None:
        """Print ``message`` after the wall time and the process's CPU time (all threads) so far."""
        print(f"[{time.perf_counter() - self.start:5.0f} s, cpu {time.process_time():5.0f} s] {message}", flush=True)

    @property
    def seeds(self) -> list[int]:
        return [self.config.seed + i for i in range(self.config.seeds)]

    def grid(self, k: int, kind: str) -> tuple[float, ...]:
        c = self.config
        return (c.probe_learning_rates if k == 0 else
                c.learning_rates if kind == TANGENT else c.nonlinear_learning_rates)


def kind_of(k: int, kind: str) -> str:
    """The learning-rate family: the probe (k = 0), tangent or non-linear."""
    return PROBE if k == 0 else kind


def chunk(steps: int) -> int:
    """The largest divisor of ``steps`` that is at most steps / 10: the steps per compiled call."""
    return next(c for c in range(max(1, steps // 10), 0, -1) if steps % c == 0)


def fit(setup: Setup, data: TaskData, k: int, kind: str, *, lr: float, seed: int,
        index: np.ndarray | None = None, steps: int | None = None, start=None,
        dp: tangent.DPSGD | None = None, delta: float | None = None) -> tangent.FitResult:
    """One model (seed ``seed``) on the training examples ``index`` (default all), for
    ``steps`` steps (default ``data.steps_for``), from ``start`` (default zeros)."""
    c = setup.config
    h, y = data.h(k), data.labels()
    if index is not None:
        h, y = tuple(a[index] for a in h), y[index]
    steps = steps or data.steps_for(len(y))
    return tangent.fit(data.model(k, kind, seed), h, y, steps=steps, key=jax.random.key(seed),
                       batch_size=min(c.batch_size, len(y)), tangent=start, dp=dp, delta=delta,
                       precomputed=True, log_every=chunk(steps), progress=c.progress,
                       **data.recipe.replace(learning_rate=lr).fit_kwargs(steps))


def fit_components(setup: Setup, data: TaskData, k: int, kind: str, *, lr: float, seed: int,
                   index: np.ndarray, ids: np.ndarray | None = None) -> tangent.TangentVector:
    """K components (stacked (K, ...)) on the rows of ``index`` (K, n), all at once; the component
    of shard ``ids[i]`` (default i) uses the key ``fold_in(key(seed), ids[i])``, whatever the
    other components; as many epochs as one model on all data."""
    c = setup.config
    h, y = data.h(k), data.labels()
    steps = data.steps_for(index.shape[1])
    ids = jnp.arange(len(index)) if ids is None else jnp.asarray(ids)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(ids)
    out = tangent.fit_components(data.model(k, kind, seed), tuple(a[index] for a in h), y[index], steps=steps,
                                 keys=keys, batch_size=min(c.batch_size, index.shape[1]), precomputed=True,
                                 log_every=chunk(steps), progress=c.progress,
                                 **data.recipe.replace(learning_rate=lr).fit_kwargs(steps))
    return out.tangent


def evaluate(data: TaskData, k: int, kind: str, seed: int, d, split: str = "test", *,
             stacked: bool = False) -> np.ndarray:
    """Logits of ``d`` (or of each of the stacked vectors) on ``split``."""
    return measure.logits(data.model(k, kind, seed), d, data.h(k, split), stacked=stacked)


def choose(setup: Setup, data: TaskData, k: int, kind: str, name: str) -> dict:
    """The learning rate of ``(k, kind)`` on ``data``: every rate of the grid trained with the first
    seed, the best by validation accuracy kept (the first on ties), then the other seeds at that
    rate. Returns the rate, the validation accuracy of each rate, the test accuracy of each seed,
    the vectors, and the time per step of a run after compilation (nan with one seed)."""
    seeds, grid = setup.seeds, setup.grid(k, kind)
    tried = {}
    for lr in grid:
        setup.log(f"{name}: {data.task.name}, learning rate {lr:g} (seed {seeds[0]})")
        result = fit(setup, data, k, kind, lr=lr, seed=seeds[0])
        validation = measure.accuracy(evaluate(data, k, kind, seeds[0], result.tangent, "validation"),
                                      data.labels("validation"))
        tried[lr] = (validation, result)
    lr = max(grid, key=lambda r: tried[r][0])
    runs, ms = [tried[lr][1]], float("nan")
    for seed in seeds[1:]:
        setup.log(f"{name}: learning rate {lr:g}, seed {seed}")
        result, wall = measure.seconds(lambda s=seed: fit(setup, data, k, kind, lr=lr, seed=s))
        runs.append(result)
        ms = 1000 * wall / data.steps
    tests = [measure.accuracy(evaluate(data, k, kind, s, r.tangent), data.labels("test"))
             for s, r in zip(seeds, runs)]
    return {"lr": lr, "validation": {str(r): tried[r][0] for r in grid}, "test": tests,
            "vectors": [r.tangent for r in runs], "losses": runs[0].losses, "ms_per_step": ms}
