"""The study from start to end: check the config, run what is not finished, choose learning rates on
the validation split, write the report."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Sequence

from experiments import harness
from experiments.associative_recall import config as config_lib
from experiments.associative_recall import plan, report
from experiments.associative_recall.config import Config
from experiments.associative_recall.train import run_trial


def check_resumable(config: Config, results: harness.Results) -> None:
    """ValueError if `results` holds runs made with other settings than `config` (only the fields in
    `RESUMABLE` may change between runs into the same folder)."""
    record = results.read_config()
    if record is None:
        return
    before = record["config"]
    now = json.loads(json.dumps(dataclasses.asdict(config)))
    changed = [k for k in now if k not in config_lib.RESUMABLE and before.get(k) != now[k]]
    if changed:
        raise ValueError(
            f"results folder {str(results.path)!r} holds runs with other settings ("
            + ", ".join(f"{k}={before.get(k)!r}" for k in changed)
            + "); choose another --out or remove that folder")


def finished(results: harness.Results) -> dict[str, dict]:
    """{trial name: final record} of the trials logged in `results`."""
    return {r["run"]: r for r in results.read_metrics() if r.get("final")}


def choose_learning_rates(config: Config, records: dict[str, dict]) -> dict[str, float]:
    """{arm: learning rate} for the arms with their own sweep: the best validation accuracy of the
    first seed (ties: the smaller rate)."""
    chosen = {}
    for arm in plan.all_arms(config):
        if arm.lr_from is None:
            scores = [(records[plan.Trial(arm, lr, 0).name]["valid_accuracy"], -lr)
                      for lr in config.learning_rates]
            chosen[arm.name] = -max(scores)[1]
    return chosen


def check(config: Config) -> None:
    """ValueError, before anything is written, if `config` is invalid or its results folder holds
    runs with other settings."""
    config_lib.check(config)
    plan.check(config)
    check_resumable(config, harness.Results(config.out))


def run(config: Config) -> dict[str, dict]:
    """Run every trial of `config` not finished in its results folder, then write the report.
    Returns {trial name: final record}."""
    check(config)
    results = harness.Results(config.out, tensorboard=config.tensorboard)
    results.write_config(config)
    records = finished(results)
    tic = time.perf_counter()

    def execute(trials):
        for trial in trials:
            if trial.name in records:
                print(f"{trial.name}: finished earlier, skipped")
                continue
            records[trial.name] = run_trial(config, trial, results)

    execute(list(plan.lr_sweep(config)))
    chosen = choose_learning_rates(config, records)
    execute(list(plan.seed_trials(config, chosen)))
    report.write(config, records, chosen, results, seconds=time.perf_counter() - tic)
    return records


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Command line: build the config from `argv`, run, print results.md and return its path."""
    import experiments.associative_recall as package

    harness.distributed.initialize()  # several processes when launched so (see harness.distributed)
    config = harness.command_line(Config, config_lib.PRESETS, argv, prog="python -m experiments.associative_recall",
                                  description=package.__doc__.split("\n\n")[0], check=check)
    run(config)
    out = pathlib.Path(config.out) / "results.md"
    print(out.read_text())
    return out
