"""Multi-query associative recall (MQAR), as defined by the Zoology benchmark (Arora et al., 2023).

A sequence of `seq_len` tokens starts with `num_pairs` key-value pairs `k_1 v_1 k_2 v_2 ...`; keys come
from the lower half of the vocabulary (1 .. V/2 - 1, distinct), values from the upper half (V/2 .. V-1,
distinct). The rest of the sequence has `space = (seq_len - 2P) // 2` even slots; each key is asked again
once, at position `2P + 2 g` for a gap `g` drawn without replacement from the power law
`p(g) proportional to (g + 1) ** (power_a - 1)`, g = 0 .. space - 1 (small `power_a` puts most
queries soon after the pairs). At a query position the model must predict the key's value (the
next-token target there); the loss and the accuracy count only those positions.

Every other position holds a filler: token 0 (`fillers="zero"`, Zoology's paper configurations,
`random_non_queries=False`), or (`fillers="random"`) a noise token drawn uniformly from the vocabulary
minus the example's keys and values. Zoology's random fillers come from the whole vocabulary; excluding
the example's keys and values (our choice) means no noise token ever repeats a key (an unlabelled
"query") or shows a value after the pairs, so the only place an answer occurs in the inputs is right
after its key in the pairs.

Batches are generated with numpy from a seed; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


FILLERS = ("zero", "random")


def check_task(vocab_size: int, seq_len: int, num_pairs: int, power_a: float, fillers: str = "zero") -> None:
    """Raise ValueError naming the argument unless the sizes define a valid MQAR task."""
    if fillers not in FILLERS:
        raise ValueError(f"fillers={fillers!r}; expected one of {FILLERS}")
    if num_pairs < 1:
        raise ValueError(f"num_pairs must be >= 1; got {num_pairs}")
    if vocab_size // 2 - 1 < num_pairs:
        raise ValueError(
            f"vocab_size={vocab_size} has only vocab_size // 2 - 1 = {vocab_size // 2 - 1} keys; "
            f"num_pairs={num_pairs} needs vocab_size >= {2 * num_pairs + 2}"
        )
    if seq_len < 4 * num_pairs:
        raise ValueError(f"seq_len={seq_len} must be >= 4 * num_pairs = {4 * num_pairs}")
    if not power_a > 0:
        raise ValueError(f"power_a must be > 0; got {power_a}")


def gap_probabilities(space: int, power_a: float) -> np.ndarray:
    """p(g) for g = 0 .. space - 1: proportional to (g + 1) ** (power_a - 1), summing to 1."""
    p = np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1.0)
    return p / p.sum()


def _distinct(rng: np.random.Generator, batch: int, low: int, high: int, k: int) -> np.ndarray:
    """(batch, k) distinct integers per row, uniform from [low, high)."""
    return low + np.argsort(rng.random((batch, high - low)), axis=1)[:, :k]


def generate(
    rng: np.random.Generator,
    batch_size: int,
    *,
    vocab_size: int,
    seq_len: int,
    num_pairs: int,
    power_a: float = 0.01,
    fillers: str = "zero",
) -> dict[str, np.ndarray]:
    """One MQAR batch.

    Returns dict of numpy arrays, each (batch_size, seq_len):
      inputs  int32: the token sequence
      targets int32: at a query position the value to predict, 0 elsewhere
      mask    float32: 1 at the num_pairs query positions, 0 elsewhere
    """
    check_task(vocab_size, seq_len, num_pairs, power_a, fillers)
    b, p, half = batch_size, num_pairs, vocab_size // 2
    keys = _distinct(rng, b, 1, half, p)
    values = _distinct(rng, b, half, vocab_size, p)

    if fillers == "zero":
        inputs = np.zeros((b, seq_len), np.int64)
    else:  # the r-th token of the vocabulary once the example's keys and values are removed
        excluded = np.sort(np.concatenate([keys, values], axis=1), axis=1)
        shifted = excluded - np.arange(2 * p)  # nondecreasing: #excluded tokens <= t is #(shifted <= r)
        r = rng.integers(0, vocab_size - 2 * p, size=(b, seq_len))
        inputs = r + (shifted[:, None, :] <= r[:, :, None]).sum(-1)

    inputs[:, 0 : 2 * p : 2] = keys
    inputs[:, 1 : 2 * p : 2] = values

    # Query gaps: `p` distinct draws from the power law, sequentially without replacement
    # (Gumbel top-k gives exactly that distribution).
    space = (seq_len - 2 * p) // 2
    scores = np.log(gap_probabilities(space, power_a)) + rng.gumbel(size=(b, space))
    gaps = np.argsort(-scores, axis=1)[:, :p]
    query_pos = 2 * p + 2 * gaps
    rows = np.arange(b)[:, None]
    inputs[rows, query_pos] = keys
    targets = np.zeros((b, seq_len), np.int32)
    targets[rows, query_pos] = values
    mask = np.zeros((b, seq_len), np.float32)
    mask[rows, query_pos] = 1.0
    return {"inputs": inputs.astype(np.int32), "targets": targets, "mask": mask}


def mixture(
    rng: np.random.Generator,
    batch_size: int,
    *,
    vocab_size: int,
    seq_len: int,
    num_pairs: Sequence[int],
    power_a: float = 0.01,
    fillers: str = "zero",
) -> dict[str, np.ndarray]:
    """A batch split (as evenly as possible, in order) between the tasks with `num_pairs[i]` pairs."""
    sizes = [len(part) for part in np.array_split(np.arange(batch_size), len(num_pairs))]
    parts = [
        generate(rng, n, vocab_size=vocab_size, seq_len=seq_len, num_pairs=p, power_a=power_a,
                 fillers=fillers)
        for n, p in zip(sizes, num_pairs)
        if n
    ]
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
