"""Setting up, running and resuming the six sections; each section is a Markdown part of
results.md, plots and metrics records."""

from __future__ import annotations

import datetime
import json
import pathlib
import time
import warnings

import tangent
from experiments.harness import Results, atomic_write
from experiments.tangent_composition import composition, continual, finetuning, privacy, unlearning
from experiments.tangent_composition.config import (PRESENTATION, SAME, SECTIONS, Config, results_fields, taft_ks,
                                                     validate)
from experiments.tangent_composition.task import load_task
from experiments.tangent_composition.training import Setup, build


def results_folder(config: Config) -> pathlib.Path:
    if config.out is not None:
        return pathlib.Path(config.out)
    return pathlib.Path("runs/tangent_composition") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def resume(folder: pathlib.Path, config: Config) -> dict[str, dict]:
    """The finished sections of an earlier run in ``folder`` ({name: its 'done' record}), after
    dropping the records of unfinished ones (metrics rewritten atomically). ValueError if the
    earlier run's settings differ in anything that changes results; nothing is written before
    that check. Records without a readable config.json are dropped (their settings are unknown)."""
    results = Results(folder)
    records = results.read_metrics()
    earlier = results.read_config()
    if earlier is None:
        if records:
            warnings.warn(f"{folder}: metrics without a readable config.json are dropped; starting afresh",
                          stacklevel=2)
            atomic_write(results.metrics_path, "")
        return {}
    earlier = earlier["config"]
    ours = json.loads(json.dumps(results_fields(config), default=str))
    changed = sorted(key for key in set(ours) | set(earlier)
                     if key not in (*PRESENTATION, "sections") and earlier.get(key) != ours.get(key))
    if changed:
        diffs = ", ".join(f"{key}: {earlier.get(key)!r} there, {ours.get(key)!r} now" for key in changed)
        raise ValueError(f"--out={str(folder)!r} holds a run with other settings ({diffs}); refusing to mix "
                         "results: use another --out, or the same settings to resume")
    done = {r["section"]: r for r in records if r.get("done")}
    kept = [r for r in records if r.get("section", "").split("_")[0] in done]
    if len(kept) < len(records):
        atomic_write(results.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
    return done


def setup(config: Config) -> tuple[Setup, list[int]]:
    """Validate, load both tasks, check block counts, then (and only then) open the results folder."""
    start = time.perf_counter()
    config = validate(config)
    folder = results_folder(config)
    done = resume(folder, config)  # refuses a run with other settings before anything is loaded
    main = load_task(config, config.dataset)
    separate = config.class_dataset not in (SAME, config.dataset) and {"tmc", "intcl"} & set(config.sections)
    classes = load_task(config, config.class_dataset) if separate else main
    ks = taft_ks(config, main.depth)
    if config.k > min(main.depth, classes.depth):
        raise ValueError(f"Config.k = {config.k}; expected at most the backbone's {main.depth} blocks")
    for task, name in ((main, "dataset"), (classes, "class_dataset")):
        if task.num_classes < 2:
            raise ValueError(f"Config.{name}: {task.name} has fewer than two classes")
    if {"tmc", "intcl"} & set(config.sections) and max(config.class_tasks) > classes.num_classes:
        raise ValueError(f"Config.class_tasks = {config.class_tasks}; expected at most the "
                         f"{classes.num_classes} classes of {classes.name}")
    if max(config.shards) > len(main.labels["train"]):
        raise ValueError(f"Config.shards = {config.shards}; expected at most the {len(main.labels['train'])} "
                         "training examples")
    results = Results(folder)
    results.write_config(config)
    print(f"{main.name} / {classes.name}: caching features", flush=True)
    main_data = build(main, sorted({0, config.k, *ks}), tangent.recipe(config.recipe), config.steps)
    class_data = main_data if classes is main else build(classes, [config.k], tangent.recipe(config.class_recipe),
                                                          config.class_steps)
    s = Setup(config, main_data, class_data, results, start=start)
    s.summaries = {name: r.get("summary", {}) for name, r in done.items()}
    s.cache["markdown"] = {name: r["markdown"] for name, r in done.items()}
    return s, ks


def run(config: Config) -> pathlib.Path:
    """Run the six sections, skipping those an earlier run into the same folder finished;
    returns the results folder."""
    folder = results_folder(validate(config))
    done = resume(folder, config)
    if all(name in done for name in config.sections):
        print(f"{folder}: every section is finished; nothing to run", flush=True)
        Results(folder).write_markdown([done[n]["markdown"] for n in SECTIONS if n in done])
        return folder
    s, ks = setup(config)
    steps = {"taft": lambda: finetuning.run(s, ks), "tmc": lambda: composition.run(s),
             "forgetting": lambda: composition.forgetting(s), "intcl": lambda: continual.run(s),
             "safe": lambda: unlearning.run(s), "dp": lambda: privacy.run(s)}
    markdown = s.cache["markdown"]
    for name in (n for n in SECTIONS if n in s.config.sections):
        if name in markdown:
            s.log(f"{name}: finished in an earlier run, skipped")
            continue
        text, summary = steps[name]()
        s.summaries[name], markdown[name] = summary, text
        s.results.log({"section": name, "done": True, "markdown": text, "summary": summary})
        s.results.write_markdown([markdown[n] for n in SECTIONS if n in markdown])
        s.log(f"{name}: done")
    s.log(f"results: {s.results.path / 'results.md'}")
    return s.results.path
