"""Backbones for experiments (Flax Linen), with parameter names of public checkpoints."""

from experiments.backbones.vit import ViT, ViTConfig

__all__ = ["ViT", "ViTConfig"]
