"""Real labeled text for the embedded default: the VADER sentiment lexicon.

The ``vaderSentiment`` package ships ``vader_lexicon.txt``: about 7,500 English words,
slang and emoticons, each rated by 10 people on a -4 (extremely negative) .. +4
(extremely positive) scale. An entry's label is the bin of its mean rating:
``num_classes`` ordered bins holding about equal numbers of entries (quantiles), so
class 0 is the most negative tenth of the lexicon when ``num_classes = 10``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources

import numpy as np


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """Tokenized entries: ``input_ids``, ``attention_mask`` int32 (n, length); ``labels`` int32 (n,)."""
    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray
    texts: tuple[str, ...]
    ratings: np.ndarray

    def __len__(self):
        return len(self.labels)

    def take(self, index) -> "TextSplit":
        index = np.asarray(index)
        return TextSplit(self.input_ids[index], self.attention_mask[index], self.labels[index],
                         tuple(self.texts[i] for i in index), self.ratings[index])


def vader_lexicon() -> tuple[list[str], np.ndarray]:
    """(entries, mean ratings float32) from the installed ``vaderSentiment`` package."""
    try:
        files = importlib.resources.files("vaderSentiment")
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "the embedded default needs the VADER lexicon: pip install vaderSentiment") from e
    entries, ratings = [], []
    for line in (files / "vader_lexicon.txt").read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[0].strip():
            entries.append(fields[0].strip())
            ratings.append(float(fields[1]))
    return entries, np.asarray(ratings, np.float32)


def quantile_labels(ratings: np.ndarray, num_classes: int) -> np.ndarray:
    """Ordered bins of about equal size: label = #(inner quantile edges <= rating)."""
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2")
    edges = np.quantile(ratings, np.arange(1, num_classes) / num_classes)
    return np.searchsorted(edges, ratings, side="right").astype(np.int32)


def tokenize(tokenizer, texts, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """``tokenizers.Tokenizer`` -> (input_ids, attention_mask) int32 (len(texts), max_length)."""
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(length=max_length)
    enc = tokenizer.encode_batch(list(texts))
    return (np.asarray([e.ids for e in enc], np.int32),
            np.asarray([e.attention_mask for e in enc], np.int32))


def sentiment_splits(tokenizer, *, num_classes: int = 10, max_length: int = 12,
                     test_fraction: float = 0.2, limit: int | None = None,
                     seed: int = 0) -> tuple[TextSplit, TextSplit]:
    """Shuffled train / test splits of the lexicon (``limit`` keeps a random subset)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    entries, ratings = vader_lexicon()
    labels = quantile_labels(ratings, num_classes)
    order = np.random.default_rng(seed).permutation(len(entries))
    if limit is not None:
        order = order[:limit]
    ids, mask = tokenize(tokenizer, [entries[i] for i in order], max_length)
    data = TextSplit(ids, mask, labels[order], tuple(entries[i] for i in order), ratings[order])
    n_test = max(1, int(round(len(order) * test_fraction)))
    return data.take(np.arange(n_test, len(order))), data.take(np.arange(n_test))
