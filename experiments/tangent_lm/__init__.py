"""Tangent fine-tuning, composition, forgetting and privacy of a pretrained byte-level language model
(B'MOJO by default): ``python -m experiments.tangent_lm``.

1. Pretrain (`experiments.language_model`) or load (``--checkpoint``, a `bmojo.save` folder) a
   byte-level model on Shakespeare's plays outside the domains.
2. Domains: comedies, tragedies, histories (First Folio genres), split by play. Per domain one
   tangent component (TAFT-k: the last k blocks, the final norm and the head; all trained at once
   with `tangent.fit_components`) against non-linear fine-tuning of the same parameters (same loop,
   batches and optimizer); learning rates chosen on each domain's validation play; bits per byte.
3. Composition (mean of the components, one model) against the non-linear ensemble (mean of the
   next-byte distributions) and the weight soup, on each domain and the union; inference cost
   against the number of components.
4. Forgetting: a component removed equals a composition that never held it (max abs difference).
5. DP-SGD on one domain, with epsilon from the accountant of what ran.
6. The cost of a tangent training step relative to a non-linear one, per preset, on this backend.

Presets: ``default`` (2 CPU cores, about 15 minutes), ``tiny`` (tests). Results folder: config.json,
metrics.jsonl, results.md, bpb.png, pretrained/ (`bmojo.save`), vectors/; a rerun resumes.

    python -m experiments.tangent_lm
    python -m experiments.tangent_lm --model=bmojo_f --k=2
    python -m experiments.tangent_lm --checkpoint=runs/tangent_lm/pretrained --out=runs/tangent_lm2
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from experiments.data.text import MissingDataError
from experiments.tangent_lm.config import PRESETS, Config
from experiments.tangent_lm.experiment import check, run

__all__ = ["PRESETS", "Config", "main", "run"]


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Parse ``--preset=NAME --key=value ...`` (``--help`` lists them), run, print results.md and
    return its path. Bad arguments end the program with one line and exit status 2."""
    from experiments import harness

    return harness.run_command(Config, PRESETS, run, argv, prog="python -m experiments.tangent_lm",
                               description=__doc__.split("\n\n")[0], check=check, fatal=(MissingDataError,))
