"""A results folder: the resolved config, metrics as JSON lines, a Markdown table file and PNG plots.

    folder/config.json     the config as run, with the jax version, devices and command line
    folder/metrics.jsonl   one JSON object per line, e.g. {"run": "mamba", "step": 100, "loss": 1.2}
    folder/results.md      Markdown sections (title, text, tables) written by the experiment
    folder/*.png           plots (matplotlib, Agg backend: no display needed)
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the backend)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured Markdown table; floats are formatted with `floatfmt`, None as "-"."""

    def cell(v):
        if v is None:
            return "-"
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class Results:
    """Writes into `path` (created if missing); appending metrics survives restarts."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"

    def write_config(self, config: Any) -> None:
        """config.json: the dataclass `config` plus where and how it ran."""
        record = {
            "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config),
            "command": " ".join(sys.argv),
            "jax_version": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
        }
        (self.path / "config.json").write_text(json.dumps(record, indent=2, default=str) + "\n")

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one metrics record (JSON-serialisable values; numpy scalars are converted)."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def drop_metrics(self, run: str, after_step: int) -> None:
        """Forget the records of `run` logged after `after_step` (they are recomputed on resume)."""
        kept = [r for r in self.read_metrics() if not (r.get("run") == run and r.get("step", -1) > after_step)]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write_markdown(self, sections: Sequence[str], name: str = "results.md") -> pathlib.Path:
        """Write the Markdown `sections` (joined by blank lines) to `name`."""
        out = self.path / name
        out.write_text("\n\n".join(s.strip() for s in sections) + "\n")
        return out

    def plot(
        self,
        name: str,
        panels: Sequence[Mapping[str, Any]],
        suptitle: str = "",
    ) -> pathlib.Path:
        """Line plots side by side, saved as `name`.png. Each panel is a dict with "series"
        ({label: (xs, ys)}), and optional "title", "xlabel", "ylabel", "logx", "logy", "ylim"."""
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            for label, (xs, ys) in panel["series"].items():
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label)
            ax.set_title(panel.get("title", ""))
            ax.set_xlabel(panel.get("xlabel", ""))
            ax.set_ylabel(panel.get("ylabel", ""))
            if panel.get("logx"):
                ax.set_xscale("log", base=2)
            if panel.get("logy"):
                ax.set_yscale("log")
            if "ylim" in panel:
                ax.set_ylim(*panel["ylim"])
            ax.grid(alpha=0.3)
            if panel["series"]:
                ax.legend(fontsize=8)
        if suptitle:
            fig.suptitle(suptitle)
        fig.tight_layout()
        out = self.path / f"{name}.png"
        fig.savefig(out, dpi=120)
        plt.close(fig)
        return out


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    return v
