"""Multi-process training on JAX's own runtime, for real on one machine: two CPU processes on
localhost (gloo collectives, 2 devices each) give the losses and parameters of one process with 4
devices on the same global batches, with FSDP-sharded parameters and an orbax checkpoint written by
both processes and resumed from. Loopback only; the test starts and stops every process itself."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from experiments.harness import distributed

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multiprocess_worker.py"
LIMIT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k == "JAX_ENABLE_X64"}
    return dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", **extra)


def _result(text: str) -> dict:
    return json.loads(text.split("RESULT", 1)[1])


def _losses(folder: pathlib.Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())]


def test_two_processes_match_one(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "two")], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=_env(2, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                       JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    try:
        one = subprocess.run([sys.executable, str(WORKER), str(tmp_path / "one")], cwd=REPO, text=True,
                             capture_output=True, env=_env(4), timeout=LIMIT_S)
        outputs = [p.communicate(timeout=LIMIT_S)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-3000:]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    single, (first, second) = _result(one.stdout), [_result(t) for t in outputs]
    assert single["processes"] == 1 and first["processes"] == second["processes"] == 2
    assert single["devices"] == first["devices"] == 4 and first["sharded"]
    assert all("resumed from step 4" in t for t in outputs)
    # the same losses at every step, the resumed steps 5 and 6 included; only process 0 wrote them
    steps = [s for s, _ in _losses(tmp_path / "two" / "results")]
    assert steps == [1, 2, 3, 4, 5, 6] == [s for s, _ in _losses(tmp_path / "one" / "results")]
    np.testing.assert_allclose([v for _, v in _losses(tmp_path / "two" / "results")],
                               [v for _, v in _losses(tmp_path / "one" / "results")], rtol=1e-6)
    for got in (first, second):
        for a, b in zip(got["params"], single["params"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "2"}, "JAX_COORDINATOR_ADDRESS, JAX_PROCESS_ID missing"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES='two'"),
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "JAX_PROCESS_ID=2"),
])
def test_bad_multi_process_settings_are_refused(env, message, monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_DISTRIBUTED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        distributed.initialize()


def test_single_process_without_settings(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_DISTRIBUTED"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False
