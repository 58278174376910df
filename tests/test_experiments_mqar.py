"""MQAR generator: correct answers, power-law query placement, zero fillers (Zoology's), no answer leaking
into random fillers."""

import numpy as np
import pytest

from experiments.data import mqar

V, L, P = 64, 64, 8


def _batch(seed=0, batch=64, **kw):
    args = dict(vocab_size=V, seq_len=L, num_pairs=P) | kw
    return mqar.generate(np.random.default_rng(seed), batch, **args)


def test_answers_are_the_values_of_the_queried_keys():
    b = _batch()
    x, y, m = b["inputs"], b["targets"], b["mask"]
    assert x.shape == y.shape == m.shape == (64, L)
    for row in range(len(x)):
        pairs = {int(x[row, 2 * i]): int(x[row, 2 * i + 1]) for i in range(P)}
        assert len(pairs) == P  # distinct keys
        assert all(1 <= k < V // 2 for k in pairs) and all(V // 2 <= v < V for v in pairs.values())
        assert len(set(pairs.values())) == P
        (pos,) = np.nonzero(m[row])
        assert len(pos) == P and np.all(pos >= 2 * P) and np.all((pos - 2 * P) % 2 == 0)
        assert sorted(int(x[row, t]) for t in pos) == sorted(pairs)  # every key asked once
        for t in pos:
            assert y[row, t] == pairs[int(x[row, t])]
        assert np.all(y[row][m[row] == 0] == 0)


def test_zero_fillers_everywhere_but_the_pairs_and_the_queries():
    b = _batch(seed=2)
    x, m = b["inputs"], b["mask"]
    after = x[:, 2 * P:]
    np.testing.assert_array_equal(after == 0, m[:, 2 * P:] == 0)
    assert np.all(x[:, :2 * P] > 0)


def test_no_answer_leaks_into_random_fillers():
    b = _batch(seed=1, vocab_size=40, num_pairs=16, fillers="random")  # noise would often hit keys/values
    x, m = b["inputs"], b["mask"]
    for row in range(len(x)):
        keys, values = x[row, 0:32:2], x[row, 1:32:2]
        after = x[row, 32:]
        # values appear only in the pairs; keys after the pairs only at query positions
        assert not np.isin(after, values).any()
        assert np.array_equal(np.isin(x[row], keys)[32:], m[row, 32:] == 1)
        assert np.all((x[row] >= 0) & (x[row] < 40))


def test_sequences_vary_and_are_reproducible_from_the_seed():
    a, b, c = _batch(seed=3, fillers="random"), _batch(seed=3, fillers="random"), _batch(seed=4, fillers="random")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["inputs"], c["inputs"])
    noise = a["inputs"][:, 2 * P :][a["mask"][:, 2 * P :] == 0]
    assert len(np.unique(noise)) > V - 2 * P - 4  # noise covers the allowed vocabulary


def _gap_histogram(batch, seq_len, num_pairs, power_a):
    b = mqar.generate(
        np.random.default_rng(7), batch, vocab_size=256, seq_len=seq_len, num_pairs=num_pairs, power_a=power_a
    )
    rows, pos = np.nonzero(b["mask"])
    gaps = (pos - 2 * num_pairs) // 2
    return np.bincount(gaps, minlength=(seq_len - 2 * num_pairs) // 2) / batch


@pytest.mark.parametrize("power_a", [0.01, 0.5])
def test_single_query_gap_follows_the_power_law(power_a):
    hist = _gap_histogram(20000, 24, 1, power_a)  # 11 gaps
    g = np.arange(1, 12, dtype=np.float64)
    expected = g ** (power_a - 1) / np.sum(g ** (power_a - 1))
    np.testing.assert_allclose(hist, expected, atol=0.012)
    assert hist[0] > hist[5] > 0


def test_two_queries_follow_sequential_sampling_without_replacement():
    # closed form: P(gap j chosen) = p_j + sum_{i != j} p_i p_j / (1 - p_i)
    power_a, space = 0.3, 6
    p = np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    p /= p.sum()
    expected = np.array([p[j] + sum(p[i] * p[j] / (1 - p[i]) for i in range(space) if i != j) for j in range(space)])
    hist = _gap_histogram(20000, 16, 2, power_a)
    np.testing.assert_allclose(hist, expected, atol=0.015)


def test_mixture_splits_the_batch_between_pair_counts():
    b = mqar.mixture(np.random.default_rng(0), 10, vocab_size=V, seq_len=L, num_pairs=(2, 4, 8))
    counts = b["mask"].sum(1)
    np.testing.assert_array_equal(counts, [2] * 4 + [4] * 3 + [8] * 3)


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(num_pairs=0), "num_pairs"),
        (dict(vocab_size=16, num_pairs=8), "vocab_size"),
        (dict(seq_len=30, num_pairs=8), "seq_len"),
        (dict(power_a=0.0), "power_a"),
        (dict(fillers="noise"), "fillers"),
    ],
)
def test_bad_sizes_raise(kw, name):
    with pytest.raises(ValueError, match=name):
        _batch(**kw)
