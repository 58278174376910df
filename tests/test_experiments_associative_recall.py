"""MQAR experiment: the tiny end-to-end run and its rerun (finished runs skipped, changed settings
refused), --help and bad options, the masked accuracy, and that full attention learns recall where a
one-token window cannot."""

import dataclasses
import json

import numpy as np
import pytest

import bmojo
from experiments import associative_recall as ar


def test_help_lists_presets_and_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        ar.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for text in ("tiny", "zoology", "--memory_slots_sweep=", "--window=", "Eidetic capacity"):
        assert text in out


@pytest.mark.parametrize("argv, match", [
    (["--models=gpt"], "gpt"),
    (["--sweep=transformer"], "sweep"),
    (["--eval_pairs=40"], "num_pairs=40"),
    (["--window_sweep=0"], "window"),
    (["--stepz=3"], "--stepz"),
    (["--preset=huge"], "huge"),
])
def test_bad_options_raise_value_error(argv, match):
    with pytest.raises(ValueError, match=match):
        ar.main(argv)


def test_accuracy_counts_only_the_query_positions():
    # batch 1, length 4, vocab 3: argmax per position is 2, 0, 1, 1
    logits = np.array([[[0, 1, 5], [9, 0, 0], [0, 3, 1], [0, 2, 1]]], np.float32)
    targets = np.array([[2, 1, 1, 0]])
    mask = np.array([[0, 1, 1, 1]], np.float32)  # position 0 is right but not a query
    out = ar.masked_accuracy(logits, targets, mask)
    assert float(out["correct"]) == 1.0 and float(out["count"]) == 3.0


def test_tiny_run_writes_the_report_and_a_rerun_skips_finished_runs(tmp_path, monkeypatch, capsys):
    argv = ["--preset=tiny", f"--results_dir={tmp_path}", "--progress=false"]
    ar.main(argv)
    table = (tmp_path / "results.md").read_text()
    for name in bmojo.PRESETS:
        assert f"| {name} |" in table
    for png in ("accuracy_vs_pairs.png", "accuracy_vs_memory.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = {(r["run"], r["eval_pairs"]) for r in records if "eval_pairs" in r}
    assert evals == {(name, p) for name in bmojo.PRESETS for p in ar.PRESETS["tiny"].eval_pairs}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records if "eval_pairs" in r)

    def fail(*args):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ar, "train_and_evaluate", fail)
    ar.main(argv)
    assert (tmp_path / "results.md").read_text() == table
    assert "finished earlier, skipped" in capsys.readouterr().out
    with pytest.raises(ValueError, match="other settings .*learning_rate=0.003"):
        ar.main(argv + ["--learning_rate=0.1"])


def test_full_attention_recalls_where_a_one_token_window_cannot(tmp_path):
    # One pair per sequence: the query can be answered only by looking back at the pair.
    config = dataclasses.replace(
        ar.PRESETS["tiny"], models=("transformer", "swa"), sweep=(), seq_len=8, train_pairs=(1,),
        eval_pairs=(1,), window=1, steps=150, batch_size=16, eval_examples=64, learning_rate=1e-2,
        results_dir=str(tmp_path))
    accuracy = ar.run(config)
    chance = 1 / (config.vocab_size // 2)  # values are uniform over the upper half of the vocabulary
    assert accuracy["transformer"][1] > 0.9
    assert accuracy["swa"][1] < 2 * chance
