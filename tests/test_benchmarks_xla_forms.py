"""benchmarks.xla_forms at tiny sizes: each form and peer gets a row per mode with its time and
compiled temporaries, every peer computes its op (float64 oracles) and agrees with our reference in
the run, a missing peer is skipped with a note; and benchmarks.lm_step's memory-only option."""

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import xla_forms
from benchmarks.peers import PeerUnavailable
from tests import oracles


def test_quick_run_times_every_form_and_checks_the_peers(tmp_path, capsys):
    """Two ops (both kinds of entry: a scan with recurrentgemma's peers, attention with jax.nn's and
    tokamax's); selective_scan's peers are checked by the oracle test below, its forms by test_ops."""
    ops = ("ssd", "bmojo_attention")
    xla_forms.main(["--sizes", "quick", "--ops", ",".join(ops), "--repeats", "1",
                    "--out", str(tmp_path)])
    table = capsys.readouterr().out
    assert "| op | length | impl | mode | ms | temp_mib |" in table
    record = json.loads((tmp_path / "cpu-xla_forms.json").read_text())
    assert record["lengths"] == [32] and record["peer_tolerance"] == xla_forms.PEER_TOLERANCE
    rows = {(r["op"], r["impl"], r["mode"]): r for r in record["rows"]}
    assert {op for op, _, _ in rows} == set(ops)
    for op in ops:
        forms = xla_forms.our_forms(op)
        assert forms[0] == "reference" and "xla" in forms and "pallas" not in forms
        assert {i for o, i, _ in rows if o == op} == set(forms) | set(xla_forms.PEERS[op])
        for form in forms:
            for mode in xla_forms.MODES:
                row = rows[op, form, mode]
                assert row["ms"] > 0 and row["temp_bytes"] >= 0, row
        assert rows[op, "reference", "fwd"]["speedup_vs_reference"] == 1.0
        assert rows[op, "xla", "fwd"]["rel_err"] < 1e-5
        for peer in xla_forms.PEERS[op]:
            fwd = rows[op, peer, "fwd"]
            if importlib.util.find_spec(peer.split()[0]) is None:  # the peer's package
                assert fwd["skipped"].startswith("not installed"), fwd
                continue
            assert fwd["rel_err_vs"] == "reference", fwd
            assert fwd["agrees"] and fwd["rel_err"] <= xla_forms.PEER_TOLERANCE, fwd
            assert rows[op, peer, "fwd+bwd"]["ms"] > 0
            assert rows[op, "xla", "fwd"]["peer"] in xla_forms.PEERS[op]


@pytest.mark.parametrize("op, peer", [(op, peer) for op in xla_forms.OPS
                                      for peer in xla_forms.PEERS[op]])
def test_each_peer_computes_the_op_like_the_float64_oracle(op, peer):
    """The peers as the benchmark calls them, forward, against tests.oracles at the quick shapes
    (both outputs of the scans: y and the last state)."""
    spec = xla_forms.SIZES["quick"]
    args, make = xla_forms.entry(op, xla_forms.shape_at(op, spec, spec["lengths"][0]), spec)
    if importlib.util.find_spec(peer.split()[0]) is None:  # the peer's package
        with pytest.raises(PeerUnavailable, match="not installed"):
            make(peer)
        return
    got = jax.jit(make(peer))(*args)
    if op == "bmojo_attention":
        q, k, v = args
        want = oracles.bmojo_attention(q, k, v, spec["window"])[:1]
        got = (got,)
    elif op == "selective_scan":
        want = oracles.selective_scan(*args, delta_softplus=True)
    else:
        want = oracles.ssd(*args)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-4 * np.abs(w).max())


def test_a_missing_peer_is_skipped_with_a_note(monkeypatch, capsys):
    def absent(scan_type):
        raise PeerUnavailable("recurrentgemma is not installed (test)")

    monkeypatch.setattr(xla_forms, "_linear_scan", absent)
    monkeypatch.setattr(xla_forms, "our_forms", lambda op: ("reference",))
    rows = xla_forms.measure("ssd", 8, xla_forms.SIZES["quick"], repeats=1, max_temp=2**30,
                             slow_call_s=10.0, cap=xla_forms.common.TimeCap(None))
    xla_forms.add_ratios(rows)
    assert "note: ssd peer 'recurrentgemma (linear)' skipped" in capsys.readouterr().out
    peers = [r for r in rows if r["kind"] == "peer"]
    assert len(peers) == 4 and all(r["skipped"].startswith("not installed") for r in peers)
    ours = [r for r in rows if r["kind"] == "ours"]
    assert all(r["ms"] > 0 and "speedup_vs_peer" not in r for r in ours)


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "0,64"], "--lengths"),
    (["--ops", "ssd,mamba3"], "--ops"),
    (["--repeats", "0"], "--repeats"),
    (["--max-temp-gib", "-1"], "--max-temp-gib"),
])
def test_bad_arguments_are_refused_before_any_work(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        xla_forms.main([*argv, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_lm_step_memory_only_compiles_and_runs_nothing(monkeypatch, tmp_path):
    """benchmarks.lm_step --memory-only (issue 15's training-memory figure): each step compiled and
    its memory reported, no step run."""
    from benchmarks import lm_step

    def step_and_state(cfg, config, batch, length, reference):  # a stand-in step: (batch, length) floats
        step = jax.jit(lambda state, data: (state + 1, jnp.sum(jnp.exp(data) * state)),
                       donate_argnums=0)
        return step, jnp.ones(()), jnp.zeros((batch, length))

    monkeypatch.setitem(lm_step.SIZES, "quick", {"preset": "tiny", "lengths": (16,),
                                                 "tokens_per_step": 32})
    monkeypatch.setattr(lm_step, "step_and_state", step_and_state)
    monkeypatch.setattr(lm_step.statistics, "median", None)  # a timed step would fail here
    lm_step.main(["--memory-only", "--models", "mamba2", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "cpu-lm_step.json").read_text())
    assert record["memory_only"] and record["models_from"] == "experiment"
    reference, mamba2 = record["rows"]
    assert mamba2["model"] == "mamba2" and reference["model"].startswith("transformer")
    for row in (reference, mamba2):
        assert row["batch"] == 2 and 0 <= row["temp_gib"] < row["peak_gib"], row
        assert "step_ms" not in row and "tokens_per_s" not in row
    assert mamba2["memory_vs_reference"] == pytest.approx(mamba2["peak_gib"] / reference["peak_gib"])


@pytest.mark.parametrize("name, ssm_kind", [("mamba", "mamba1"), ("mamba2", "mamba2"),
                                            ("bmojo", "mamba1")])
def test_lm_step_library_models_are_the_issue_s_four_layers_of_width_128(name, ssm_kind):
    from benchmarks import lm_step

    cfg = lm_step.library_config(name, 256, 4096)
    assert (cfg.n_layers, cfg.d_model, cfg.ssm_kind, cfg.ssm_state) == (4, 128, ssm_kind, 16)
    assert cfg.max_len == 4096 and cfg.vocab_size == 256
