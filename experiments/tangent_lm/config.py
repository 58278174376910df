"""The experiment's config: a frozen dataclass with attribute docstrings (``--help``) and presets.

Presets: ``default`` (the embedded setting: 2 CPU cores, at most about 15 minutes) and ``tiny``
(tests: seconds).
"""

from __future__ import annotations

import dataclasses

import bmojo
from experiments import harness
from experiments.language_model import PRESETS as LM_PRESETS
from experiments.tangent_lm import domains


@dataclasses.dataclass(frozen=True)
class Config:
    """Tangent fine-tuning, composition and forgetting of a byte-level language model."""

    model: str = "bmojo"
    """Preset of the pretrained model (`bmojo.preset`), at the parameter count that
    `experiments.language_model` matches to its Transformer."""
    checkpoint: str | None = None
    """A model saved with `bmojo.save` to start from (None: pretrain one on the plays outside the
    domains, saved in OUT/pretrained). It must not have seen the domains' plays."""
    domains: tuple[str, ...] = domains.GENRES
    """Adaptation domains: genres of Shakespeare's plays (comedies, tragedies, histories)."""
    plays_per_domain: int = 3
    """Plays of each genre held out of pretraining: all but the last two train the domain, the
    second last validates (learning rates), the last tests."""
    lm_preset: str = "default"
    """Preset of `experiments.language_model` giving the model sizes, the window length T and the
    pretraining recipe (its plays are replaced by this experiment's split)."""
    pretrain_steps: int | None = None
    """Pretraining steps (None: the lm_preset's)."""
    k: int = 1
    """TAFT-k: the last k blocks, the final norm and the head are adapted (tangent and non-linear)."""
    train_windows: int = 256
    """Training windows per domain (random windows of its training plays, fixed)."""
    steps: int = 150
    """Adaptation steps per domain (tangent and non-linear alike)."""
    batch_size: int = 16
    """Windows per step."""
    learning_rates: tuple[float, ...] = (1e-3, 3e-3)
    """Adam learning rates; each method takes the one with the lowest mean validation bits per byte."""
    seeds: tuple[int, ...] = (0, 1)
    """Seeds of the adaptation (minibatch order); tables give mean ± std over them."""
    eval_windows: int = 48
    """Evaluation windows per domain and split (evenly spaced over the play)."""
    eval_batch_size: int = 16
    """Windows per evaluation batch."""
    forget_domain: str = "histories"
    """The domain whose component is removed (forgetting)."""
    dp_domain: str = "histories"
    """The domain treated as private (DP-SGD on its tangent component)."""
    dp_noise: float = 1.0
    """DP-SGD noise multiplier sigma."""
    dp_clip: float = 1.0
    """DP-SGD clip norm C (per-example gradient of the mean loss over a window)."""
    dp_delta: float = 1e-5
    """delta of the reported (epsilon, delta)."""
    cost_models: tuple[str, ...] = ("transformer", "mamba2", "bmojo_f", "bmojo")
    """Presets whose tangent/non-linear training step costs are measured (none: skip that section)."""
    cost_repeats: int = 5
    """Timed repetitions of each step (the median is reported)."""
    out: str = "runs/tangent_lm"
    """Results folder; a rerun with the same folder resumes and skips finished sections."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self):
        validate(self)


def _fail(name: str, value, expected: str):
    raise ValueError(f"Config.{name} = {value!r}; expected {expected}")


def validate(c: Config) -> None:
    """ValueError naming the first invalid field (before anything is read or written)."""
    if not isinstance(c.domains, tuple) or len(c.domains) < 2:
        _fail("domains", c.domains, "at least two domains (composition and forgetting need two)")
    harness.check_fields(
        c, positive=("plays_per_domain", "pretrain_steps", "train_windows", "steps", "batch_size", "learning_rates",
                     "eval_windows", "eval_batch_size", "dp_noise", "dp_clip", "cost_repeats"),
        nonnegative=("seeds", "k"), finite=("learning_rates", "dp_noise", "dp_clip"),
        probability=("dp_delta",),
        choices={"model": tuple(bmojo.PRESETS), "lm_preset": tuple(LM_PRESETS), "forget_domain": c.domains,
                 "domains": domains.GENRES, "dp_domain": c.domains,
                 "cost_models": tuple(bmojo.PRESETS)})
    for name in ("domains", "learning_rates", "seeds", "cost_models"):
        values = getattr(c, name)
        if (not values and name != "cost_models") or len(set(values)) != len(values):
            _fail(name, values, "at least one entry, none repeated" if name != "cost_models" else "none repeated")
    if c.plays_per_domain < 3 or c.plays_per_domain > domains.MAX_PLAYS:
        _fail("plays_per_domain", c.plays_per_domain,
              f"an integer in [3, {domains.MAX_PLAYS}] (train, validation and test plays)")
    if not 0 < c.dp_delta < 1:
        _fail("dp_delta", c.dp_delta, "a number in (0, 1)")
    if c.batch_size > c.train_windows:
        _fail("batch_size", c.batch_size, f"at most train_windows = {c.train_windows}")
    if c.k < 1:
        _fail("k", c.k, "an integer >= 1 (at most the model's number of blocks)")


PRESETS = {
    "default": Config(),
    "tiny": Config(lm_preset="tiny", pretrain_steps=4, train_windows=8,
                   steps=3, batch_size=4, learning_rates=(1e-3,), seeds=(0,), eval_windows=4,
                   eval_batch_size=4, cost_models=("transformer", "bmojo"), cost_repeats=1,
                   progress=False),
}
"""`default`: the embedded CPU setting; `tiny`: tests."""
