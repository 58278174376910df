"""python -m experiments.tangent_composition: the data (offline, from PyPI packages), a tiny
end-to-end run of the six sections (MiniLM; TFDS mock data + a random ViT for section 1),
resuming and refusing reruns, exact forgetting, shards and tasks, and option errors."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tangent
from experiments.backbones import ViT, ViTConfig, loaders
from experiments.data import bbc_news, rotten_tomatoes
from experiments.harness import parse_args
from experiments.tangent_composition import PRESETS, Config, main, run
from experiments.tangent_composition.composition import forget
from experiments.tangent_composition.continual import summarize, task_matrix
from experiments.tangent_composition.experiment import resume
from experiments.tangent_composition.measure import class_tasks, logits, shard_indices, task_accuracy
from experiments.tangent_composition.task import Nonlinear, taft_model, vit_task

TITLES = ("## 1. TAFT-k", "## 2. Tangent model composition", "## 3. Forgetting", "## 4. Continual learning",
          "## 5. SAFE", "## 6. Differential privacy")
TINY_VIT = ViTConfig(num_classes=10, image_size=32, patch_size=8, width=32, depth=2, mlp_dim=64, num_heads=2)


def test_corpora_ship_in_their_packages():
    rt = rotten_tomatoes.load()
    assert len(rt.texts) == 12752 == len(set(rt.texts)) and np.bincount(rt.labels).tolist() == [5384, 7368]
    bbc = bbc_news.load()
    assert bbc.classes == ("business", "entertainment", "politics", "sports", "tech")
    assert np.bincount(bbc.labels).tolist() == [510, 386, 417, 511, 401]
    assert bbc.texts[0].startswith("Ad sales boost Time Warner profit")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tc") / "results"
    config = dataclasses.replace(PRESETS["tiny"], out=str(folder))
    return config, run(config)


@pytest.mark.slow
def test_tiny_end_to_end(tiny_run):
    config, folder = tiny_run
    text = (folder / "results.md").read_text()
    assert all(t in text for t in TITLES), text
    for plot in ("taft", "tmc", "intcl", "safe", "dp"):
        assert (folder / f"{plot}.png").stat().st_size > 0
    assert json.loads((folder / "config.json").read_text())["config"]["steps"] == config.steps
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["section"] for m in metrics if m.get("done")] == ["taft", "tmc", "forgetting", "intcl", "safe", "dp"]
    (forgetting,) = [m for m in metrics if m["section"] == "forgetting" and not m.get("done")]
    assert forgetting["max_abs_diff_never_added"] == 0.0
    assert forgetting["max_abs_diff_retrained"] < 1e-3  # the same seeds: floating-point batching only
    tmc = [m for m in metrics if m["section"] == "tmc" and not m.get("done")]
    assert {m["split"] for m in tmc} == {"data", "class"} and all(m["max_abs_gap"] < 1e-4 for m in tmc)
    assert all(len(m["TMC composition"]) == config.seeds for m in tmc)
    intcl = [m for m in metrics if m["section"] == "intcl" and not m.get("done")]
    assert {m["method"] for m in intcl} == {"IntCL", "sequential FT + replay"}
    (safe,) = [m for m in metrics if m["section"] == "safe" and not m.get("done")]
    assert safe["forget"]["retrained"] == [config.forget] and safe["components"] == 1  # disconnected
    dp = [m for m in metrics if m["section"] == "dp" and not m.get("done")]
    assert len(dp) == 2 * config.seeds * len(config.dp_noise) and all(0 < m["epsilon"] < np.inf for m in dp)


@pytest.mark.slow
def test_rerun_resumes_and_other_settings_are_refused(tiny_run, capsys):
    config, folder = tiny_run
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".json", ".jsonl")}
    assert run(config) == folder  # every section finished: nothing is trained again
    assert "every section is finished" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"other settings \(steps: 8 there, 9 now\)"):
        run(dataclasses.replace(config, steps=9))
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".json", ".jsonl")} == before


def test_resume_drops_the_records_of_unfinished_sections(tmp_path):
    config = dataclasses.replace(PRESETS["tiny"], out=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"config": dataclasses.asdict(config)}, default=str))
    records = [{"section": "taft", "method": "probe"}, {"section": "taft", "done": True, "markdown": "# 1"},
               {"section": "tmc", "split": "data"}, {"section": "tmc_cost", "n": 1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert list(resume(tmp_path, config)) == ["taft"]
    kept = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == records[:2]
    (tmp_path / "config.json").write_text('{"config": {"steps"')  # a write cut short
    with pytest.warns(UserWarning, match="starting afresh"):
        assert resume(tmp_path, config) == {}
    assert (tmp_path / "metrics.jsonl").read_text() == ""


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    variables = ViT(TINY_VIT).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    path = tmp_path_factory.mktemp("vit") / "vit.npz"
    loaders.save_vit_npz(variables["params"], str(path))
    return path


@pytest.mark.slow
def test_tfds_vit_section_one_on_mock_data(tmp_path, vit_checkpoint):
    tfds = pytest.importorskip("tensorflow_datasets")
    assert loaders.vit_config_from_npz(str(vit_checkpoint)) == TINY_VIT
    config = dataclasses.replace(PRESETS["tiny"], dataset="cifar10", class_dataset="same",
                                 checkpoint=str(vit_checkpoint),
                                 layers=None, taft_blocks=("1",), limit=40, sections=("taft",),
                                 data_dir=str(tmp_path / "tfds"), out=str(tmp_path / "results"))
    with tfds.testing.mock_data(num_examples=64):
        folder = run(config)
    methods = {json.loads(line).get("method") for line in (folder / "metrics.jsonl").read_text().splitlines()}
    assert methods >= {"linear probe (head)", "TAFT-1", "non-linear FT-1"}
    with pytest.raises(ValueError, match="not a prepared tensorflow-datasets"):
        run(dataclasses.replace(config, out=str(tmp_path / "other")))  # nothing prepared, nothing downloaded
    assert not (tmp_path / "other").exists()


def random_vit_task(checkpoint):
    """The tiny random ViT on 12 random images (no dataset needed)."""
    template = jax.eval_shape(ViT(TINY_VIT).init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    params = loaders.load_vit_npz(str(checkpoint), template["params"])
    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(12, dtype=np.int32) % 10
    splits = ("train", "validation", "test")
    return vit_task(TINY_VIT, params, "tiny ViT", dict.fromkeys(splits, images), dict.fromkeys(splits, labels),
                    tuple(map(str, range(10))))


def test_forgetting_equals_the_composition_built_without_the_component(vit_checkpoint):
    task = random_vit_task(vit_checkpoint)
    model = taft_model(task, 1, source=1)
    features = tangent.compute_features(taft_model(task, 1), task.inputs["test"])
    rng = np.random.default_rng(1)
    vectors = [tangent.TangentVector({p: jnp.asarray(rng.normal(0, 0.1, w.shape), w.dtype)
                                      for p, w in model.primal().items()}) for _ in range(4)]
    out = forget(model, vectors, 2, features)
    assert out["composition"].names == ["shard 0", "shard 1", "shard 3"]
    without = logits(model, tangent.compose([vectors[i] for i in (0, 1, 3)]), features)
    np.testing.assert_array_equal(out["logits"], without)
    assert out["max_abs_diff"] == 0.0
    with_it = logits(model, tangent.compose(vectors), features)
    assert np.max(np.abs(with_it - without)) > 1e-3  # the forgotten component mattered
    # The cached-feature models agree with the end-to-end ones, tangent and non-linear.
    np.testing.assert_allclose(without, np.asarray(taft_model(task, 1)(tangent.compose(
        [vectors[i] for i in (0, 1, 3)]), *task.inputs["test"])), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits(Nonlinear.of(model), vectors[0], features),
                               np.asarray(model.apply_nonlinear(vectors[0], *features)), rtol=1e-5, atol=1e-5)


def test_shards_tasks_and_task_accuracy():
    by_data = shard_indices(30, 4, seed=0)
    assert by_data.shape == (4, 7) and len(set(by_data.ravel())) == 28
    labels = np.repeat(np.arange(5), [6, 4, 5, 7, 8])
    index, tasks = class_tasks(labels, 5, 2, seed=0)
    assert tasks == [[0, 1, 2], [3, 4]] and index.shape == (2, 15)
    assert all(set(labels[row]) <= set(t) for row, t in zip(index, tasks))
    # Task-incremental: argmax among the example's own task's classes only.
    logits_ = np.array([[0, 5, 1, 9, 0], [0, 0, 0, 1, 2.0]])
    assert task_accuracy(logits_, np.array([1, 4]), tasks) == 1.0


def test_continual_accuracy_and_forgetting_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 2])  # tasks {0}, {1, 2}: 2 and 4 test examples
    tasks = [[0], [1, 2]]
    after_first = np.array([[1, 0, 0]] * 6, float)  # predicts class 0 everywhere
    after_second = np.eye(3)[[0, 1, 1, 1, 2, 2]]  # task 0: 1 of 2 right; task 1: 3 of 4 right
    a = task_matrix([after_first[:2], after_second], labels, tasks)  # after task 0: its examples only
    np.testing.assert_allclose(a, [[1.0, np.nan], [0.5, 0.75]])
    out = summarize(a, labels, tasks)
    assert out["seen_acc"] == [1.0, (0.5 * 2 + 0.75 * 4) / 6] and out["forgetting"] == 0.5


@pytest.mark.parametrize("argv, message", [
    (["--dataset=cifar10"], "class_dataset = 'bbc_news'; expected 'same'"),
    (["--checkpoint=x.npz"], "checkpoint = 'x.npz'; expected None"),
    (["--shards=1"], r"shards = \(1,\)"),
    (["--forget=5"], "forget = 5"),
    (["--recipe=sgd"], "recipe = 'sgd'"),
    (["--dp_noise=0"], "dp_noise"),
    (["--steps=0"], "Config.steps = 0; expected a positive integer"),
    (["--steps=-1"], "Config.steps = -1; expected a positive integer"),
    (["--learning_rates=nan"], "learning_rates"),
    (["--graph_degrees=3"], "graph_degrees"),
    (["--sections=tmc"], "tmc with the sections it reads: taft"),
    (["--stepz=3"], "unknown option --stepz"),
])
def test_bad_options_raise_clear_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_args(Config, PRESETS, argv)


def test_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--dp_noise=1.0,4.0" in text and "tiny" in text and "IntCL" in text
