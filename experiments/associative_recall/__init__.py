"""Multi-query associative recall (MQAR): which memory lets a language model recall?

Every model (`bmojo` presets at the same width and depth) is trained on MQAR by Zoology's protocol
(`experiments.data.mqar`: key-value pairs, then each key asked again later; zero fillers; a fixed
training set, epochs, early stop at 0.99 validation accuracy; a learning-rate sweep whose best rate
per model is chosen on a validation split; several seeds, mean and standard deviation) and tested per
number of pairs. A memory sweep varies each family's knob (B'MOJO's eidetic capacity, the window of
sliding-window attention, the SSM state) and plots accuracy against total memory in floats, the
x-axis of B'MOJO's MQAR figure; ablations of B'MOJO (store rule, predictor, fillers, positional
encoding, layer pattern, and our SSM-residual variant) get a table each.

    python -m experiments.associative_recall                   # CPU default, minutes
    python -m experiments.associative_recall --preset=zoology  # Zoology's sizes, GPU/TPU
    python -m experiments.associative_recall --preset=paper    # B'MOJO's figure, GPU/TPU
    python -m experiments.associative_recall --help

Results folder (`--out`): config.json, metrics.jsonl (training loss, validation accuracy per
epoch, one final record per run), results.md, accuracy_vs_pairs.png, accuracy_vs_memory.png. A rerun
into the same folder skips finished runs (and resumes unfinished ones from their checkpoints when
`checkpoint_every` > 0); a rerun with settings that change results is refused.
"""

from experiments.associative_recall.config import PRESETS, Config
from experiments.associative_recall.experiment import main, run
from experiments.associative_recall.measure import masked_accuracy, memory_floats

__all__ = ["PRESETS", "Config", "main", "masked_accuracy", "memory_floats", "run"]
