"""benchmarks.xla_forms at tiny sizes: every XLA form and peer of every op gets a row per mode with
its time and compiled temporaries, the installed peers agree with our reference numerically, and a
missing peer is skipped with a note."""

import importlib.util
import json

import pytest

from benchmarks import xla_forms
from benchmarks.peers import PeerUnavailable


def test_quick_run_times_every_form_and_checks_the_peers(tmp_path, capsys):
    xla_forms.main(["--sizes", "quick", "--lengths", "32", "--repeats", "1", "--out", str(tmp_path)])
    table = capsys.readouterr().out
    assert "| op | length | impl | mode | ms | temp_mib |" in table
    record = json.loads((tmp_path / "cpu-xla_forms.json").read_text())
    assert record["lengths"] == [32] and record["peer_tolerance"] == xla_forms.PEER_TOLERANCE
    rows = {(r["op"], r["impl"], r["mode"]): r for r in record["rows"]}
    for op in xla_forms.OPS:
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
            package = "tokamax" if peer.startswith("tokamax") else (
                "recurrentgemma" if peer.startswith("recurrentgemma") else "jax")
            fwd = rows[op, peer, "fwd"]
            if importlib.util.find_spec(package) is None:
                assert fwd["skipped"].startswith("not installed"), fwd
                continue
            assert fwd["rel_err_vs"] == "reference", fwd
            assert fwd["agrees"] and fwd["rel_err"] <= xla_forms.PEER_TOLERANCE, fwd
            assert rows[op, peer, "fwd+bwd"]["ms"] > 0
            assert rows[op, "xla", "fwd"]["peer"] in xla_forms.PEERS[op]


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
