"""MQAR study: --help and bad options refused before anything is written, the masked accuracy, total
memory against a closed form, learning rates chosen on validation (never test), a tiny end-to-end run
with its rerun (finished runs skipped, changed settings refused), and early stopping with full
attention recalling where a one-token window cannot."""

import dataclasses
import json
import re

import jax
import numpy as np
import pytest

import bmojo
from experiments import associative_recall as ar
from experiments.associative_recall import experiment, plan


def test_help_lists_presets_and_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        ar.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for text in ("tiny", "zoology", "paper", "--memory_slots_sweep=", "--learning_rates=", "--fillers=",
                 "Eidetic capacity"):
        assert text in out


@pytest.mark.parametrize("argv, match", [
    (["--models=gpt"], "gpt"),
    (["--sweep=attention"], "sweep"),
    (["--eval_pairs=40"], "num_pairs=40"),
    (["--window_sweep=0"], "window_sweep"),
    (["--max_epochs=0"], "max_epochs"),
    (["--max_epochs=-1"], "max_epochs"),
    (["--seeds=0"], "seeds"),
    (["--learning_rates=nan"], "learning_rates"),
    (["--learning_rates=0.01,-1"], "learning_rates"),
    (["--early_stop=1.5"], "early_stop"),
    (["--fillers=noise"], "fillers"),
    (["--ablations=dropout"], "ablations"),
    (["--models=swa,bmojo", "--sweep=bmojo"], "bmojo_f"),  # the fillers ablation needs bmojo_f
    (["--sweep=mamba", "--models=mamba2"], "sweep"),
    (["--stepz=3"], "--stepz"),
    (["--preset=huge"], "huge"),
])
def test_bad_options_are_refused_before_anything_is_written(argv, match, tmp_path, capsys):
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_:
        ar.main(argv + ["--out", str(out)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m experiments.associative_recall: error: ") and error.count("\n") == 1
    assert re.search(match, error), error
    assert not out.exists()


def test_accuracy_counts_only_the_query_positions():
    # batch 1, length 4, vocab 3: argmax per position is 2, 0, 1, 1
    logits = np.array([[[0, 1, 5], [9, 0, 0], [0, 3, 1], [0, 2, 1]]], np.float32)
    targets = np.array([[2, 1, 1, 0]])
    mask = np.array([[0, 1, 1, 1]], np.float32)  # position 0 is right but not a query
    out = ar.masked_accuracy(logits, targets, mask)
    assert float(out["correct"]) == 1.0 and float(out["count"]) == 3.0


def test_total_memory_against_closed_forms():
    config = dataclasses.replace(ar.PRESETS["default"], d_model=32, n_heads=2, window=4, ssm_state=16,
                                 memory_slots=8, seq_len=32)
    kv = 2 * 1 * 16  # keys and values of one kv head of width 16 per token
    mamba2 = 64 * 16 + 3 * (64 + 2 * 16)  # heads x head_dim x state + (conv_width - 1) x conv channels
    expected = {"transformer": 2 * kv * 32, "swa": 2 * kv * 4, "mamba2": 2 * mamba2,
                "bmojo_f": 2 * (kv * 4 + kv * 4 + mamba2), "bmojo": 2 * (kv * 4 + kv * 4 + mamba2 + kv * 8)}
    for name, floats in expected.items():
        model = plan.model_config(config, plan.Arm(name, name))
        assert ar.memory_floats(model, 32) == floats, name
        cache = jax.eval_shape(lambda m=model: bmojo.init_cache(m, 1))
        assert floats <= sum(x.size for x in jax.tree.leaves(cache))


def test_learning_rate_is_chosen_on_validation_never_on_test():
    config = dataclasses.replace(ar.PRESETS["tiny"], models=("swa",), sweep=(), ablations=(),
                                 learning_rates=(1e-3, 1e-2, 3e-2))
    arm = plan.Arm("swa", "swa")
    valid = {1e-3: 0.4, 1e-2: 0.7, 3e-2: 0.7}  # a tie goes to the smaller rate
    test = {1e-3: 0.9, 1e-2: 0.1, 3e-2: 0.95}
    records = {plan.Trial(arm, lr, 0).name: {"valid_accuracy": valid[lr], "test_accuracy": {"2": test[lr]}}
               for lr in config.learning_rates}
    assert experiment.choose_learning_rates(config, records) == {"swa": 1e-2}


TINY = dataclasses.replace(ar.PRESETS["tiny"], models=("swa", "bmojo_f", "bmojo"), sweep=("bmojo",),
                           ablations=("fillers",), progress=False)


def test_tiny_run_writes_the_report_and_a_rerun_skips_finished_runs(tmp_path, monkeypatch, capsys):
    config = dataclasses.replace(TINY, out=str(tmp_path))
    records = ar.run(config)
    table = (tmp_path / "results.md").read_text()
    for name in ("swa", "bmojo_f", "bmojo", "bmojo memory_slots=2", "bmojo fillers=random", "## Ablation: fillers"):
        assert f"| {name}" in table or name in table
    for png in ("accuracy_vs_pairs.png", "accuracy_vs_memory.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    finals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    finals = {r["run"]: r for r in finals if r.get("final")}
    assert finals.keys() == records.keys()
    # the protocol: every model's first seed at every rate, the chosen rate's best validation accuracy
    for arm in ("swa", "bmojo_f", "bmojo"):
        sweep = {r["learning_rate"]: r["valid_accuracy"] for r in finals.values() if r["arm"] == arm and r["seed"] == 0}
        assert sorted(sweep) == sorted(config.learning_rates)
        chosen = {r["learning_rate"] for r in finals.values() if r["arm"] == arm and r["seed"] > 0}
        assert chosen == {max(sweep, key=lambda lr: (sweep[lr], -lr))}
    assert all(0.0 <= acc <= 1.0 for r in finals.values() for acc in r["test_accuracy"].values())

    def fail(*args):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(experiment, "run_trial", fail)
    ar.run(config)
    assert (tmp_path / "results.md").read_text().split("runs,")[0] == table.split("runs,")[0]
    assert "finished earlier, skipped" in capsys.readouterr().out
    with pytest.raises(ValueError, match="other settings .*max_epochs=2"):
        ar.run(dataclasses.replace(config, max_epochs=3))


def test_full_attention_recalls_and_stops_early_where_a_one_token_window_cannot(tmp_path):
    # One pair per sequence: the query can be answered only by looking back at the pair.
    config = dataclasses.replace(
        TINY, models=("transformer", "swa"), sweep=(), ablations=(), seq_len=8, train_pairs=(1,), eval_pairs=(1,),
        window=1, train_examples=512, valid_examples=64, test_examples=64, max_epochs=8, early_stop=0.9,
        learning_rates=(1e-2,), seeds=1, out=str(tmp_path), tensorboard=True)
    records = ar.run(config)
    chance = 1 / (config.vocab_size // 2)  # values are uniform over the upper half of the vocabulary
    transformer, swa = (records[f"{m} lr=0.01 seed=0"] for m in ("transformer", "swa"))
    assert transformer["test_accuracy"]["1"] > 0.9 and transformer["epochs"] < config.max_epochs
    assert swa["test_accuracy"]["1"] < 2 * chance and swa["epochs"] == config.max_epochs
    # --tensorboard: event files per run next to metrics.jsonl (their contents: test_harness_tensorboard)
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "transformer_lr=0.01_seed=0"))
    assert {"loss", "examples_per_s", "valid_accuracy"} <= set(events.Reload().Tags()["tensors"])
