"""Data pipelines of the experiments (synthetic generators from a seed; nothing is downloaded)."""
