"""What the study trains: arms (a model setting on a data setting) and their trials (learning rate,
seed), in the order Zoology's protocol needs them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import bmojo
from experiments.associative_recall.config import SWEEP_KNOBS, Config

HYBRIDS = ("jamba", "bmojo_f", "bmojo", "bmojo_f_attn", "bmojo_attn")
"""Presets whose SSM kind is `Config.hybrid_ssm`."""
BMOJO = ("bmojo_f", "bmojo", "bmojo_f_attn", "bmojo_attn")
"""Presets with B'MOJO layers (`Config.ssm_residual` applies to them)."""


@dataclasses.dataclass(frozen=True)
class Arm:
    """One model setting: `name` (tables and records), its preset, `ModelConfig` overrides, the
    fillers of its data (None: the config's), the arm whose learning rate it takes (None: its own
    sweep) and the table it belongs to ("models", "sweep" or "ablation:GROUP")."""

    name: str
    preset: str
    overrides: tuple[tuple[str, object], ...] = ()
    fillers: str | None = None
    lr_from: str | None = None
    group: str = "models"


@dataclasses.dataclass(frozen=True)
class Trial:
    """One training run of an arm: its learning rate and the index of its seed."""

    arm: Arm
    learning_rate: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm.name} lr={self.learning_rate:g} seed={self.seed}"


def model_config(config: Config, arm: Arm) -> bmojo.ModelConfig:
    """The `ModelConfig` of `arm` at the study's width and depth. Mamba-2's SSD chunk is the largest
    power of two up to the sequence length (16 to 64): padding a short sequence to a longer chunk
    costs up to 3x on CPU."""
    d_ff = config.d_ff if bmojo.preset(arm.preset).d_ff else 0  # Mamba stacks keep their MLP-free design
    fields = dict(vocab_size=config.vocab_size, d_model=config.d_model, n_layers=config.n_layers,
                  n_heads=config.n_heads, n_kv_heads=1, d_ff=d_ff, window=config.window,
                  ssm_state=config.ssm_state, memory_slots=config.memory_slots,
                  memory_topk=config.memory_topk, memory_threshold=config.memory_threshold,
                  max_len=max(config.seq_len, config.eval_length), ssm_head_dim=min(16, 2 * config.d_model),
                  ssd_chunk_size=max(16, min(64, 1 << (config.seq_len.bit_length() - 1))))
    if arm.preset in HYBRIDS:
        fields["ssm_kind"] = config.hybrid_ssm
    if arm.preset in BMOJO and config.ssm_residual:
        fields["ssm_residual"] = True
    return bmojo.preset(arm.preset, **(fields | dict(arm.overrides)))


def main_arms(config: Config) -> list[Arm]:
    return [Arm(name, name) for name in config.models]


def sweep_arms(config: Config) -> list[tuple[Arm, str, int]]:
    """(arm, knob, value) of every memory-sweep point; a point at a model's own setting is its arm, and
    B'MOJO with 0 slots is the bmojo_f arm."""
    points = []
    for family in config.sweep:
        knob = SWEEP_KNOBS[family]
        if knob is None:
            continue
        values = {"memory_slots": config.memory_slots_sweep, "window": config.window_sweep,
                  "ssm_state": config.ssm_state_sweep}[knob]
        for value in sorted(set(values) | {getattr(config, knob)}):
            if value == getattr(config, knob):
                points.append((Arm(family, family), knob, value))
            elif knob == "memory_slots" and value == 0 and "bmojo_f" in config.models:
                points.append((Arm("bmojo_f", "bmojo_f"), knob, value))  # B'MOJO without a store
            else:
                points.append((Arm(f"{family} {knob}={value}", family, ((knob, value),), lr_from=family,
                                   group="sweep"), knob, value))
    return points


def ablation_arms(config: Config) -> dict[str, list[Arm]]:
    """{group: [arms]} of the ablations; the paper's setting of each group is the `bmojo` arm (and
    `bmojo_f` for fillers), which every table also lists."""
    groups = {
        "store": [("bmojo store=topk/oldest", "bmojo", dict(memory_select="topk", memory_evict="oldest"), None),
                  ("bmojo store=threshold", "bmojo", dict(memory_select="threshold",
                                                          memory_topk=config.window), None)],
        "predictor": [("bmojo predictor=learned", "bmojo", dict(innovation="learned"), None)],
        "fillers": [("bmojo fillers=random", "bmojo", {}, "random"),
                    ("bmojo_f fillers=random", "bmojo_f", {}, "random")],
        "positions": [("bmojo positions=rope", "bmojo", dict(position_encoding="rope"), None)],
        "pattern": [("bmojo_f_attn", "bmojo_f_attn", {}, None), ("bmojo_attn", "bmojo_attn", {}, None)],
        "variant": [("bmojo +ssm_residual (ours)", "bmojo", dict(ssm_residual=True), None)],
        "storage": [("bmojo +storage", "bmojo", dict(storage_blocks=config.storage_blocks,
                                                     storage_block_size=config.storage_block_size,
                                                     storage_topk=config.storage_topk), None)],
    }
    return {group: [Arm(name, preset, tuple(over.items()), fillers, "bmojo", f"ablation:{group}")
                    for name, preset, over, fillers in groups[group]]
            for group in config.ablations}


def baseline_of(group: str) -> tuple[str, ...]:
    """The main arms that are the paper's setting in an ablation table."""
    return ("bmojo", "bmojo_f") if group == "fillers" else ("bmojo",)


def all_arms(config: Config) -> list[Arm]:
    """Every arm once: the models, then the sweep points, then the ablations."""
    arms = main_arms(config)
    for arm, _, _ in sweep_arms(config):
        if arm not in arms:
            arms.append(arm)
    for group in ablation_arms(config).values():
        arms.extend(arm for arm in group if arm not in arms)
    return arms


def check(config: Config) -> None:
    """ValueError unless every sweep family and the ablations' baseline are among the models, and
    every arm builds a valid `ModelConfig` (the error names the field)."""
    for family in config.sweep:
        if family not in config.models:
            raise ValueError(f"Config.sweep has {family!r}, which is not in Config.models "
                             f"{config.models}; a sweep takes its family's learning rate")
    if config.ablations and "bmojo" not in config.models:
        raise ValueError("Config.ablations needs 'bmojo' in Config.models (its learning rate and "
                         "baseline row)")
    if "fillers" in config.ablations and "bmojo_f" not in config.models:
        raise ValueError("Config.ablations has 'fillers', which needs 'bmojo_f' in Config.models")
    for arm in all_arms(config):
        model_config(config, arm)


def lr_sweep(config: Config) -> Iterator[Trial]:
    """Phase 1: the first seed of every arm that chooses its own learning rate, at every rate."""
    for arm in all_arms(config):
        if arm.lr_from is None:
            for lr in config.learning_rates:
                yield Trial(arm, lr, 0)


def seed_trials(config: Config, chosen: dict[str, float]) -> Iterator[Trial]:
    """Phase 2: the other seeds of the models at their chosen rates, then every seed of the sweep
    points and ablations at the rate of the arm they follow."""
    for arm in all_arms(config):
        if arm.lr_from is None:
            for seed in range(1, config.seeds):
                yield Trial(arm, chosen[arm.name], seed)
        else:
            for seed in range(config.extra_seeds):
                yield Trial(arm, chosen[arm.lr_from], seed)
