"""Runs that never break the next run: atomic result files, truncated records, config validation,
resuming after a kill during an asynchronous checkpoint save, non-finite losses, restore errors."""

import dataclasses
import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bmojo
from experiments import harness
from tests.test_experiments_harness import _problem, _TinyLM


def test_results_files_are_replaced_whole(tmp_path, monkeypatch):
    folder = tmp_path / "res"
    res = harness.Results(folder)
    assert not folder.exists()  # nothing written before the first write
    replaced = []
    real_replace = os.replace

    def recording_replace(src, dst):
        src, dst = pathlib.Path(src), pathlib.Path(dst)
        replaced.append((src.parent == dst.parent, src.name != dst.name, dst.name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    res.write_config({"steps": 3})
    res.write_markdown(["# T"])
    res.plot("curve", [{"series": {"a": ([1, 2], [0.1, 0.2])}}])
    res.log({"run": "a", "step": 1})
    res.drop_metrics("a", 0)
    assert replaced == [(True, True, n) for n in ("config.json", "results.md", "curve.png", "metrics.jsonl")]

    # a write that fails half-way (here: at the flush to disk) leaves the old file and no temporary file
    def failing_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        res.write_config({"steps": 4})
    assert json.loads((folder / "config.json").read_text())["config"] == {"steps": 3}
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "curve.png", "metrics.jsonl", "results.md"]


def test_truncated_records_and_config(tmp_path):
    res = harness.Results(tmp_path)
    res.log({"run": "a", "step": 1, "loss": 0.5})
    res.log({"run": "a", "step": 2, "loss": 0.25})
    with res.metrics_path.open("a") as f:
        f.write('{"run": "a", "step": 3, "lo')  # a kill during an append
    with pytest.warns(UserWarning, match=r"metrics\.jsonl, line 3: truncated"):
        assert [r["step"] for r in res.read_metrics()] == [1, 2]
    again = harness.Results(tmp_path)  # the rerun
    with pytest.warns(UserWarning, match="line 3"):
        again.log({"run": "a", "step": 3, "loss": 0.125})
    assert res.metrics_path.read_text().splitlines()[2] == '{"run": "a", "step": 3, "loss": 0.125}'
    assert [r["step"] for r in again.read_metrics()] == [1, 2, 3]  # and no warning any more

    lines = res.metrics_path.read_text().splitlines()
    res.metrics_path.write_text("\n".join([lines[0], '{"run": "a", "st', lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not a JSON record"):
        res.read_metrics()

    assert res.read_config() is None
    res.write_config({"steps": 3})
    assert res.read_config()["config"] == {"steps": 3}
    text = (tmp_path / "config.json").read_text()
    (tmp_path / "config.json").write_text(text[: len(text) // 2])
    with pytest.warns(UserWarning, match=r"config\.json is truncated or corrupt.*treated as missing"):
        assert res.read_config() is None
    res.write_config({"steps": 5})
    assert res.read_config()["config"] == {"steps": 5}


@dataclasses.dataclass(frozen=True)
class Config:
    steps: int = 10
    lr: float = 1e-3
    pairs: tuple[int, ...] = (4, 8)
    dropout: float = 0.1
    optimizer: str = "adam"
    models: tuple[str, ...] = ("a", "b")
    limit: int | None = None


def _check(config):
    harness.check_fields(config, positive=("steps", "lr", "pairs", "limit"), nonnegative=("dropout",),
                         finite=("lr",), probability=("dropout",),
                         choices={"optimizer": ("adam", "sgd"), "models": ["a", "b", "c"]})


def test_check_fields():
    _check(Config())
    _check(Config(limit=3, lr=2.0, steps=1, dropout=0.0, pairs=()))
    _check(Config(dropout=1.0, models=("c",), optimizer="sgd"))
    for config, message in [
        (Config(steps=-1), "Config.steps = -1; expected a positive integer"),
        (Config(steps=0), "Config.steps = 0; expected a positive integer"),
        (Config(steps=2.5), "Config.steps = 2.5; expected a positive integer"),
        (Config(steps=True), "Config.steps = True; expected a positive integer"),
        (Config(limit=0), "Config.limit = 0; expected a positive integer"),
        (Config(lr=-0.1), "Config.lr = -0.1; expected a positive number"),
        (Config(lr=math.nan), "Config.lr = nan; expected a positive number"),
        (Config(lr=math.inf), "Config.lr = inf; expected a finite number"),
        (Config(lr="0.1"), "Config.lr = '0.1'; expected a positive number"),
        (Config(pairs=(4, -1)), "Config.pairs = (4, -1); expected every entry to be a positive integer "
                                "(entry 1 is -1)"),
        (Config(dropout=-0.5), "Config.dropout = -0.5; expected a non-negative number"),
        (Config(dropout=1.5), "Config.dropout = 1.5; expected a probability in [0, 1]"),
        (Config(dropout=math.nan), "Config.dropout = nan; expected a non-negative number"),
        (Config(optimizer="sgdd"), "Config.optimizer = 'sgdd'; expected one of 'adam', 'sgd'"),
        (Config(models=("a", "z")), "Config.models = ('a', 'z'); expected every entry to be one of 'a', 'b', "
                                    "'c' (entry 1 is 'z')"),
    ]:
        with pytest.raises(ValueError) as err:
            _check(config)
        assert str(err.value) == message
    with pytest.raises(ValueError, match="Config has no field 'stepz'"):
        harness.check_fields(Config(), positive=("stepz",))
    harness.check_fields(Config(steps=0), nonnegative=("steps",))


@dataclasses.dataclass(frozen=True)
class _Options:
    steps: int = 10
    scale: float = 1.0
    pairs: tuple[int, ...] = (4,)
    fast: bool = False
    either: int | float = 1
    shape: dict | None = None


def test_parse_args_errors_name_the_option():
    for argv, option in [
        (["--nope=1"], "--nope"),
        (["--steps=ten"], "--steps"),
        (["--steps="], "--steps"),
        (["--scale=x"], "--scale"),
        (["--pairs=4,x"], "--pairs"),
        (["--fast=maybe"], "--fast"),
        (["--either=3"], "--either"),
        (["--shape=3"], "--shape"),
        (["--preset=huge"], "--preset"),
        (["--steps"], "--steps"),
        (["steps=1"], "steps=1"),
        (["-s"], "-s"),
    ]:
        with pytest.raises(ValueError) as err:
            harness.parse_args(_Options, {"big": _Options(steps=100)}, argv)
        assert option in str(err.value), (argv, str(err.value))


def test_nonfinite_loss_stops_fit(tmp_path):
    params, batches, loss_fn = _problem()
    opt = optax.adam(math.nan)  # step 1's loss is finite, its update makes every parameter NaN
    step = harness.make_train_step(loss_fn, opt)
    res = harness.Results(tmp_path / "res")
    with pytest.raises(FloatingPointError, match=r"^run 'lm': loss is nan at step 2$"):
        harness.fit(harness.TrainState.create(params, opt, 0), step, batches, steps=20, log_every=5,
                    results=res, run="lm", progress=False)
    assert res.read_metrics() == []  # stopped at the first log boundary, before logging NaN
    # a checkpoint boundary stops it too, before the state after the NaN step is saved
    with pytest.raises(FloatingPointError, match="at step 2"):
        harness.fit(harness.TrainState.create(params, opt, 0), step, batches, steps=20, log_every=50,
                    checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1, run="lm", progress=False)
    assert harness.Checkpointer(tmp_path / "ckpt", 1).latest_step() == 1


def test_resume_after_a_kill_during_an_async_save(tmp_path, capsys):
    params, batches, loss_fn = _problem()
    opt = optax.adam(1e-2)
    step = harness.make_train_step(loss_fn, opt)
    kw = dict(steps=10, checkpoint_every=4, log_every=1, progress=False)
    whole = harness.fit(harness.TrainState.create(params, opt, 0), step, batches, **kw)

    def killed(i):
        if i == 9:
            raise KeyboardInterrupt
        return batches(i)

    ckpt, res = tmp_path / "ckpt", harness.Results(tmp_path / "res")
    with pytest.raises(KeyboardInterrupt):
        harness.fit(harness.TrainState.create(params, opt, 0), step, killed, checkpoint_dir=str(ckpt),
                    results=res, run="m", **kw)
    # make it what a kill leaves when the save of step 8 is in flight: orbax's unfinished temporary
    # folder, and a half-written metrics record
    os.rename(ckpt / "8", ckpt / "8.orbax-checkpoint-tmp")
    with res.metrics_path.open("a") as f:
        f.write('{"run": "m", "step": 9, "lo')
    capsys.readouterr()

    with pytest.warns(UserWarning, match="truncated"):
        resumed = harness.fit(harness.TrainState.create(params, opt, 0), step, batches,
                              checkpoint_dir=str(ckpt), results=res, run="m", **kw)
    out = capsys.readouterr().out
    assert "discarded incomplete checkpoints 8.orbax-checkpoint-tmp" in out and "resumed from step 4" in out
    assert not any("tmp" in p.name for p in ckpt.iterdir())
    assert [r["step"] for r in res.read_metrics()] == list(range(1, 11))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params), jax.device_get(whole.params))

    # the first save in flight: no complete checkpoint, so start over, with none of the old records
    for p in ckpt.iterdir():
        if p.name.isdigit():
            os.rename(p, ckpt / f"{p.name}.orbax-checkpoint-tmp")
    again = harness.fit(harness.TrainState.create(params, opt, 0), step, batches, checkpoint_dir=str(ckpt),
                        results=res, run="m", **kw)
    assert "resumed" not in capsys.readouterr().out
    assert [r["step"] for r in res.read_metrics()] == list(range(1, 11))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(again.params), jax.device_get(whole.params))


def test_restore_into_another_shape_is_one_clear_error(tmp_path, capfd):
    config = bmojo.ModelConfig(vocab_size=16, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, window=4,
                               d_ff=32, ssm_state=4, memory_slots=4, block_types=("bmojo", "bmojo"))
    shapes = jax.eval_shape(bmojo.LanguageModel(config).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # (eager init takes 10 s)
    directory = tmp_path / "lm"
    bmojo.save(str(directory), params, config)
    edited = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**edited, "d_model": 32}))
    capfd.readouterr()
    with pytest.raises(ValueError) as err:
        bmojo.restore(str(directory))
    message = str(err.value)
    assert str(directory) in message and "config.json" in message
    assert "params/blocks_0/mixer/attn/k_proj/kernel: saved (16, 1, 8), expected (32, 1, 16)" in message
    (directory / "config.json").write_text(json.dumps({**edited, "block_types": ["mamba", "bmojo"]}))
    with pytest.raises(ValueError, match=r"params/blocks_0/mixer/attn/\S+: saved \(.*\), not expected"):
        bmojo.restore(str(directory))
    (directory / "config.json").write_text(json.dumps({**edited, "d_model": -1}))
    with pytest.raises(ValueError, match=r"config\.json does not hold a valid ModelConfig.*d_model"):
        bmojo.restore(str(directory))

    # the harness's train-state checkpoints: same check
    opt = optax.adam(1e-2)

    def state(width):
        p = _TinyLM(16, width).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
        return harness.TrainState.create(p, opt, 0)

    ckpt = harness.Checkpointer(tmp_path / "ckpt", 1)
    ckpt.maybe_save(1, state(8), {"step": 1, "data_position": 1})
    ckpt.close()
    with pytest.raises(ValueError, match=r"ckpt/1 does not fit this run: .*saved \(8, 16\), expected \(16, 16\)"):
        harness.fit(state(16), harness.make_train_step(lambda *a: (0.0, {}), opt), lambda i: None, steps=2,
                    checkpoint_dir=str(tmp_path / "ckpt"), progress=False)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Event loop is closed" not in err
