"""Training harness: config parsing and --help, resume after an interruption, 1 vs 4 devices, results."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import harness

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class _Config:
    steps: int = 10
    """Optimizer steps."""
    lr: float = 1e-3
    """Peak learning rate."""
    pairs: tuple[int, ...] = (4, 8)
    """Pair counts, comma-separated."""
    names: tuple[str, ...] = ("a", "b")
    fast: bool = False
    """Skip the slow part."""
    limit: int | None = None


def test_config_overrides_presets_and_help(capsys):
    presets = {"big": _Config(steps=1000, lr=1e-4)}
    cfg = harness.parse_args(_Config, presets, ["--preset=big", "--lr=0.5", "--pairs=1,2,3", "--fast=true"])
    assert cfg == _Config(steps=1000, lr=0.5, pairs=(1, 2, 3), fast=True)
    cfg = harness.parse_args(_Config, presets, ["--names=x", "--limit=7"])
    assert cfg.names == ("x",) and cfg.limit == 7
    assert harness.parse_args(_Config, presets, ["--limit=none"]).limit is None
    # the space-separated forms, dashes for underscores, a bool flag alone, the last value winning
    cfg = harness.parse_args(_Config, presets, ["--lr", "0.5", "--preset", "big", "--fast", "--pairs", "1,2",
                                                "--steps", "-3", "--steps", "7"])
    assert cfg == _Config(steps=7, lr=0.5, pairs=(1, 2), fast=True)
    assert harness.parse_args(_Config, presets, ["--fast", "false", "--limit", "2"]) == _Config(limit=2)
    assert harness.parse_args(_Config, presets, ["--fast=false"]).fast is False
    assert harness.parse_args(_Config, presets, ["--fast", "--steps", "3"]) == _Config(steps=3, fast=True)
    for bad, match in [
        (["--nope=1"], "--nope"),
        (["--steps=ten"], "--steps"),
        (["--fast=maybe"], "--fast"),
        (["--preset=huge"], "huge"),
        (["steps=1"], "steps=1"),
        (["--steps"], "--steps"),
        (["--steps", "--lr=1"], "--steps"),
        (["--fast", "maybe"], "maybe"),
    ]:
        with pytest.raises(ValueError, match=match):
            harness.parse_args(_Config, presets, bad)
    with pytest.raises(SystemExit):
        harness.parse_args(_Config, presets, ["--help"], prog="prog")
    out = capsys.readouterr().out
    assert out.startswith("usage: prog [--preset NAME] [--key VALUE ...]")
    assert "--lr=0.001" in out and "Peak learning rate." in out and "--pairs=4,8" in out
    assert "big" in out and "steps=1000" in out


def test_command_line_error_is_one_line_with_exit_status_2(tmp_path):
    # the real program with a bad value (found by the config check): no traceback, nothing written
    done = subprocess.run([sys.executable, "-m", "experiments.associative_recall", "--max_epochs", "0",
                           "--out", str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if "experiments.associative_recall" in line]
    assert len(lines) == 1 and "max_epochs" in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("python -m experiments.associative_recall: error: ")
    assert not (tmp_path / "r").exists()


def test_help_into_a_closed_pipe_is_quiet():
    # `python -m experiments.X --help | head -1`: the reader leaves early; exit 0, no BrokenPipeError
    code = ("import os, sys\n"
            "r, w = os.pipe(); os.close(r); os.dup2(w, 1)\n"  # stdout: a pipe whose reader is gone
            "from experiments.harness import parse_args\n"
            "import experiments.associative_recall.config as c\n"
            "parse_args(c.Config, c.PRESETS, ['--help'])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr


class _TinyLM(nn.Module):
    """Embedding, causal running mean over positions, dense head: enough to exercise the harness."""

    vocab: int = 16
    width: int = 8

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(self.vocab, self.width)(tokens)
        h = jnp.cumsum(h, axis=1) / jnp.arange(1, tokens.shape[1] + 1)[None, :, None]
        return nn.Dense(self.vocab)(nn.tanh(nn.Dense(self.width)(h)))


def _problem(batch=8, length=12, vocab=16):
    model = _TinyLM(vocab)
    params = model.init(jax.random.key(0), jnp.zeros((1, length), jnp.int32))

    def batches(step):
        rng = np.random.default_rng([5, step])
        x = rng.integers(0, vocab, (batch, length)).astype(np.int32)
        return {"inputs": x, "targets": np.roll(x, -1, axis=1)}

    def loss_fn(params, batch, rng):
        logits = model.apply(params, batch["inputs"])
        noise = 1e-3 * jax.random.normal(rng, ())  # uses the step RNG, so resuming must restore it
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean() + noise
        return loss, {"noise": noise}

    return params, batches, loss_fn


def test_resume_after_interruption_gives_the_same_parameters(tmp_path):
    params, batches, loss_fn = _problem()
    opt = optax.adam(1e-2)
    step = harness.make_train_step(loss_fn, opt)
    kw = dict(steps=10, checkpoint_every=4, log_every=1, progress=False)

    whole = harness.fit(harness.TrainState.create(params, opt, 0), step, batches, checkpoint_dir=str(tmp_path / "a"), **kw)

    def interrupted(i):
        if i == 6:
            raise KeyboardInterrupt
        return batches(i)

    results = harness.Results(tmp_path / "res")
    with pytest.raises(KeyboardInterrupt):
        harness.fit(harness.TrainState.create(params, opt, 0), step, interrupted,
                    checkpoint_dir=str(tmp_path / "b"), results=results, run="m", **kw)
    assert harness.Checkpointer(tmp_path / "b", 4).latest_step() == 4
    assert [r["step"] for r in results.read_metrics()] == [1, 2, 3, 4, 5, 6]

    seen = []

    def recording(i):
        seen.append(i)
        return batches(i)

    resumed = harness.fit(harness.TrainState.create(params, opt, 0), step, recording,
                          checkpoint_dir=str(tmp_path / "b"), results=results, run="m", **kw)
    assert seen == list(range(4, 10))  # continued from the saved step, data position included
    assert int(resumed.step) == 10
    assert [r["step"] for r in results.read_metrics()] == list(range(1, 11))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params), jax.device_get(whole.params))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.opt_state), jax.device_get(whole.opt_state))
    # a finished run restarts as a no-op
    again = harness.fit(harness.TrainState.create(params, opt, 0), step, recording,
                        checkpoint_dir=str(tmp_path / "b"), **kw)
    assert seen == list(range(4, 10)) and int(again.step) == 10


def test_results_folder(tmp_path):
    res = harness.Results(tmp_path)
    res.write_config(_Config())
    res.log({"run": "a", "step": 1, "loss": np.float32(0.5)})
    res.log({"run": "b", "step": 2, "loss": 0.25})
    res.drop_metrics("a", 0)
    assert res.read_metrics() == [{"run": "b", "step": 2, "loss": 0.25}]
    assert json.loads((tmp_path / "config.json").read_text())["config"]["pairs"] == [4, 8]
    table = harness.markdown_table(["model", "acc"], [["a", 0.5], ["b", None]])
    assert table.splitlines() == ["| model | acc |", "|---|---|", "| a | 0.500 |", "| b | - |"]
    res.write_markdown(["# T", table])
    png = res.plot("curve", [{"series": {"a": ([1, 2], [0.1, 0.2])}, "xlabel": "x", "logx": True}])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "results.md").read_text().startswith("# T\n\n| model")


_MULTI_DEVICE = textwrap.dedent(
    """
    import json, jax, numpy as np, optax
    from experiments import harness
    from tests.test_experiments_harness import _problem
    assert jax.device_count() == 4, jax.devices()
    params, batches, loss_fn = _problem(batch=8)
    opt = optax.adam(1e-2)
    step = harness.make_train_step(loss_fn, opt)
    out = {}
    for name, devices, rule in [("one", jax.devices()[:1], None), ("four", jax.devices(), None),
                                ("four_sharded", jax.devices(), harness.shard_largest_axis(min_size=64))]:
        mesh = harness.make_mesh(devices)
        state = harness.fit(harness.TrainState.create(params, opt, 0), step, batches, steps=3, mesh=mesh,
                            param_rule=rule, progress=False)
        specs = [tuple(x.sharding.spec) for x in jax.tree.leaves(state.params)]
        _, metrics = jax.jit(step)(state, batches(3))
        out[name] = {"loss": float(metrics["loss"]), "devices": len(state.params["params"]["Dense_0"]["kernel"].devices()),
                     "replicated": all(all(a is None for a in s) for s in specs),
                     "sharded": any("data" in s for s in specs),
                     "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)]}
    try:
        harness.shard_batch({"x": np.zeros((6, 3))}, harness.make_mesh())
    except ValueError as e:
        out["error"] = str(e)
    print("RESULT" + json.dumps(out))
    """
)


def test_four_devices_match_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _MULTI_DEVICE], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["one"]["devices"] == 1 and out["four"]["devices"] == 4
    assert out["four"]["replicated"] and out["four_sharded"]["sharded"]
    assert "(6, 3)" in out["error"] and "divisible by the 4 devices" in out["error"]
    for name in ("four", "four_sharded"):
        np.testing.assert_allclose(out[name]["loss"], out["one"]["loss"], rtol=1e-6)
        for a, b in zip(out[name]["params"], out["one"]["params"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
