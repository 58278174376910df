"""Tangent fine-tuning, composition, forgetting and privacy, measured: ``python -m experiments.tangent_composition``.

A pretrained network is linearized in its last k blocks and a new head (TAFT-k,
``f(x; w0) + J(x) d``), and the tangent vector ``d`` is trained. Four sections, each a table in
results.md and a plot:

1. TAFT-k (k = 1, 2, all) against non-linear fine-tuning of the same blocks and a linear probe:
   test accuracy, training time per step, compiled FLOPs.
2. Tangent model composition (TMC): one component per shard (5 and 10 shards, data- and
   class-incremental), all trained at once by ``vmap``, averaged into one vector; against the
   paragon (one model on all data), the ensemble of non-linear shard models and their weight
   soup; accuracy and inference cost as components are added.
3. Forgetting: removing a shard's component equals never having added it (asserted), in
   microseconds, against retraining.
4. Differential privacy: DP-SGD on the tangent vector, accuracy against epsilon at fixed delta.

The embedded default runs on a 2-core CPU in minutes: the installed all-MiniLM-L6-v2 on the VADER
sentiment lexicon (negative / neutral / positive). On an accelerator: ``--dataset=NAME`` (a
prepared tensorflow-datasets image dataset) with ``--checkpoint=vit.npz`` (a big_vision ViT).
"""

from experiments.tangent_composition.config import PRESETS, Config
from experiments.tangent_composition.experiment import run

__all__ = ["PRESETS", "Config", "main", "run"]


def main(argv=None) -> None:
    """Parse ``--preset NAME --key value ...`` (``--help`` lists them) and run; a bad argument ends
    the program with one line on stderr and exit status 2."""
    from experiments.harness import command_line
    from experiments.tangent_composition.config import validate

    config = command_line(Config, PRESETS, argv, prog="python -m experiments.tangent_composition",
                          description=__doc__, check=validate)
    run(config)
