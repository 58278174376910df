"""The experiment's config: a frozen dataclass with attribute docstrings (``--help``) and presets."""

from __future__ import annotations

import dataclasses
import pathlib

VADER = "vader"
LOSSES = ("cross_entropy", "rsl")
SPLITS = ("data", "class")


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = VADER
    """'vader': the VADER sentiment lexicon (about 7,500 rated words) binned into num_classes
    classes, on the installed pretrained all-MiniLM-L6-v2. Any other name: a prepared
    tensorflow-datasets image classification dataset (nothing is downloaded), on the ViT given by
    --checkpoint."""
    checkpoint: str | None = None
    """A big_vision-style ViT .npz (image datasets only); the ViT's size is read from its shapes and
    its head is replaced by a new one for the dataset's classes."""
    data_dir: str | None = None
    """tensorflow-datasets data directory (None: TFDS's default)."""
    train_split: str = "train"
    """TFDS split to train on."""
    test_split: str = "test"
    """TFDS split to test on."""
    num_classes: int = 3
    """VADER only: ordered rating bins of equal size (3: negative / neutral / positive)."""
    max_length: int = 8
    """VADER only: tokens per entry, [CLS] and [SEP] included (99% of entries fit in 7)."""
    train_limit: int | None = None
    """Use only the first N training examples (None: all)."""
    test_limit: int | None = None
    """Use only the first N test examples (None: all)."""
    layers: int | None = None
    """Keep only the first N blocks of the pretrained backbone (None: all; for smoke runs)."""
    taft_blocks: tuple[str, ...] = ("1", "2", "all")
    """Section 1: the k of TAFT-k (last k blocks and the head linearized), an integer or 'all'.
    Each is compared with non-linear fine-tuning of the same blocks; a linear probe (head only)
    is always added."""
    k: int = 1
    """Sections 2-3: TAFT-k of the tangent components (and of the non-linear shard models)."""
    steps: int = 150
    """Optimizer steps of each single model (sections 1 and 4). A shard model takes
    steps / shards steps: every model sees its data for the same number of epochs."""
    batch_size: int = 32
    """Examples per step (capped at a shard's size)."""
    learning_rate: float = 3e-4
    """Adam learning rate of TAFT-k tangent vectors, k >= 1 (single models, components, DP-SGD).
    The default rates were chosen on VADER by the accuracy on a held-out fifth of the training
    split: from {3e-4, 1e-3, 3e-3} (tangent) and {3e-5, 1e-4, 3e-4} (non-linear) for k = 1 and
    all, from {3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1} for the probe."""
    nonlinear_learning_rate: float = 1e-4
    """Adam learning rate of non-linear fine-tuning (single models and shard models)."""
    probe_learning_rate: float = 1e-2
    """Adam learning rate of the head alone (k = 0: the linear probe, and DP-SGD with dp_blocks=0)."""
    loss: str = "cross_entropy"
    """Training loss: 'cross_entropy' or 'rsl' (the rescaled square loss of LQF/TAFT)."""
    shards: tuple[int, ...] = (5, 10)
    """Section 2: numbers of shards (one component each) the training set is cut into."""
    splits: tuple[str, ...] = SPLITS
    """Section 2: 'data' (random equal shards) and/or 'class' (shards of the training set sorted
    by class: each shard sees few classes; with more shards than classes, mostly one)."""
    forget: int = 0
    """Section 3: the shard whose component is forgotten, of the data split into shards[0] shards."""
    dp_blocks: int = 0
    """Section 4: TAFT-k trained with DP-SGD (0: the head's tangent vector, a private linear probe).
    Per-example gradients of whole blocks are slow on CPU; use 1 on an accelerator."""
    dp_noise: tuple[float, ...] = (0.6, 1.0, 2.0)
    """Section 4: DP-SGD noise multipliers sigma (Gaussian noise std = sigma * dp_clip)."""
    dp_clip: float = 1.0
    """Section 4: per-example gradient clipping norm C."""
    dp_delta: float = 1e-5
    """Section 4: the fixed delta of the (epsilon, delta) guarantee."""
    eval_batch: int = 128
    """Sections 1-2: examples per batch when measuring inference cost."""
    repeats: int = 5
    """Timed repetitions per cost measurement (the median is reported)."""
    seed: int = 0
    """Seed of the data split, head initialisation and minibatches."""
    out: str | None = None
    """Results folder (None: runs/tangent_composition/<date-time>)."""
    progress: bool = True
    """Show progress bars."""


PRESETS = {
    "default": Config(),
    # A smoke run in about a minute on a CPU: one block, a few hundred examples, a few steps.
    "tiny": Config(layers=1, train_limit=240, test_limit=60, taft_blocks=("all",), steps=6,
                   batch_size=8, shards=(2,), dp_noise=(1.0,), eval_batch=16, repeats=1,
                   progress=False),
    # Paper scale on a GPU/TPU: ViT-B/16 (give --checkpoint=...npz) on CUB-200 (prepared by TFDS).
    "cub": Config(dataset="caltech_birds2011", steps=2000, batch_size=128,
                  dp_blocks=1, dp_noise=(0.8, 1.5, 3.0), eval_batch=256),
}


def taft_ks(config: Config, depth: int) -> list[int]:
    """``config.taft_blocks`` as block counts in [1, depth] ('all' = depth), in order."""
    ks = []
    for text in config.taft_blocks:
        k = depth if text == "all" else int(text) if text.isdigit() else None
        if k is None or not 1 <= k <= depth:
            raise ValueError(f"--taft_blocks: {text!r} must be 'all' or an integer in [1, {depth}] "
                             f"(the backbone's blocks)")
        ks.append(k)
    return list(dict.fromkeys(ks))


def _positive(config: Config, *names: str) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise ValueError(f"--{name}={getattr(config, name)!r} must be positive")


def validate(config: Config) -> Config:
    """``config`` unchanged, or ValueError naming the first bad option (block ranges are checked
    again once the backbone is loaded)."""
    _positive(config, "steps", "batch_size", "learning_rate", "nonlinear_learning_rate",
              "probe_learning_rate", "dp_clip",
              "eval_batch", "repeats", "max_length")
    if config.dataset == VADER:
        if config.checkpoint is not None:
            raise ValueError("--checkpoint applies to image datasets only; --dataset=vader uses the "
                             "installed MiniLM")
        if config.num_classes < 2:
            raise ValueError(f"--num_classes={config.num_classes} must be >= 2")
    elif config.checkpoint is None:
        raise ValueError(f"--dataset={config.dataset!r} needs --checkpoint=PATH.npz (a big_vision ViT)")
    elif not pathlib.Path(config.checkpoint).is_file():
        raise ValueError(f"--checkpoint={config.checkpoint!r}: no such file")
    if config.loss not in LOSSES:
        raise ValueError(f"--loss={config.loss!r}: expected one of {', '.join(LOSSES)}")
    if not config.taft_blocks:
        raise ValueError("--taft_blocks must name at least one k")
    if not config.shards or any(s < 2 for s in config.shards):
        raise ValueError(f"--shards={config.shards}: expected integers >= 2")
    if not config.splits or not set(config.splits) <= set(SPLITS):
        raise ValueError(f"--splits={config.splits}: expected a subset of {', '.join(SPLITS)}")
    if not 0 <= config.forget < config.shards[0]:
        raise ValueError(f"--forget={config.forget} must index one of the shards[0]={config.shards[0]} shards")
    if not config.dp_noise or any(s <= 0 for s in config.dp_noise):
        raise ValueError(f"--dp_noise={config.dp_noise}: expected positive noise multipliers")
    if not 0 < config.dp_delta < 1:
        raise ValueError(f"--dp_delta={config.dp_delta} must lie in (0, 1)")
    for name in ("train_limit", "test_limit", "layers"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name}={value} must be None or positive")
    if config.k < 0 or config.dp_blocks < 0:
        raise ValueError(f"--k={config.k} and --dp_blocks={config.dp_blocks} must be >= 0")
    return config
