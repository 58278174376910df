"""Training harness shared by the experiments: configs and their validation, jit-compiled training,
results, checkpoints, sharding."""

from experiments.harness import distributed
from experiments.harness.checkpoint import Checkpointer
from experiments.harness.config import (
    apply_overrides,
    command_line,
    field_docs,
    help_text,
    parse_args,
    run_command,
)
from experiments.harness.results import Results, atomic_write, markdown_table
from experiments.harness.sharding import (
    make_mesh,
    replicate,
    shard_batch,
    shard_largest_axis,
    tree_shardings,
)
from experiments.harness.train import TrainState, evaluate, fit, make_train_step
from experiments.harness.validation import check_fields

__all__ = [
    "Checkpointer",
    "Results",
    "TrainState",
    "apply_overrides",
    "atomic_write",
    "check_fields",
    "command_line",
    "run_command",
    "distributed",
    "evaluate",
    "field_docs",
    "fit",
    "help_text",
    "make_mesh",
    "make_train_step",
    "markdown_table",
    "parse_args",
    "replicate",
    "shard_batch",
    "shard_largest_axis",
    "tree_shardings",
]
