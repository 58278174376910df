"""Optional TensorBoard event files next to metrics.jsonl, read back with TensorBoard's own reader."""

import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from experiments import harness


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
            for tag in acc.Tags()["tensors"]}


def test_tensorboard_scalars_match_the_metrics_records(tmp_path):
    res = harness.Results(tmp_path / "out", tensorboard=True)
    res.log({"run": "bmojo lr=0.01/seed 0", "step": 50, "loss": 2.5, "examples_per_s": 1234.5,
             "note": "text is skipped", "curve": [1, 2]})
    res.log({"run": "bmojo lr=0.01/seed 0", "step": 100, "loss": np.float32(1.25), "examples_per_s": 1500.0})
    res.log({"run": "bmojo lr=0.01/seed 0", "step": 100, "valid_accuracy": 0.75})
    res.log({"run": "swa", "step": 100, "loss": 3.0, "final": True})
    res.log({"section": "summary", "accuracy": 0.5})  # no run/step: metrics.jsonl only
    board = tmp_path / "out" / "tensorboard"
    assert sorted(p.name for p in board.iterdir()) == ["bmojo_lr=0.01_seed_0", "swa"]
    got = _scalars(board / "bmojo_lr=0.01_seed_0")
    want: dict[str, list] = {}
    for r in res.read_metrics():
        if r.get("run") == "bmojo lr=0.01/seed 0":
            for k, v in r.items():
                if isinstance(v, float):
                    want.setdefault(k, []).append((r["step"], v))
    assert want.keys() == {"loss", "examples_per_s", "valid_accuracy"}
    assert got.keys() == want.keys()
    for tag in want:
        np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in want[tag]], rtol=1e-6)
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]]
    assert _scalars(board / "swa") == {"loss": [(100, 3.0)]}


def test_without_the_flag_no_event_files(tmp_path):
    res = harness.Results(tmp_path, tensorboard=False)
    res.log({"run": "a", "step": 1, "loss": 1.0})
    assert not (tmp_path / "tensorboard").exists()
