"""A results folder: the resolved config, metrics as JSON lines, a Markdown table file and PNG plots.

    folder/config.json     the config as run, with the jax version, devices and command line
    folder/metrics.jsonl   one JSON object per line, e.g. {"run": "mamba", "step": 100, "loss": 1.2}
    folder/results.md      Markdown sections (title, text, tables) written by the experiment
    folder/*.png           plots (matplotlib, Agg backend: no display needed)
    folder/tensorboard/    optional: the same metrics as TensorBoard event files, one folder per run
                           (`tensorboard --logdir folder/tensorboard` shows them while a run trains)

A kill at any moment leaves every file either as it was or as newly written: whole files are written
to a temporary file in the same folder and renamed over the old one (`atomic_write`), and metrics are
appended one complete line per record. A truncated last record (a kill during an append) is ignored
with a warning, and dropped from the file by the next append.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
import sys
import warnings
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


def atomic_write(path: str | pathlib.Path, data: str | bytes) -> None:
    """Replace the file `path` by `data` in one step: write a temporary file next to it, flush it to
    disk, then `os.replace` it over `path` (a reader, or a kill, never sees a partial file)."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Results:
    """Writes into `path`; the folder is created by the first write, not by the constructor (so an
    experiment can open its results, validate its config and only then write). Appending metrics
    survives restarts.

    With `tensorboard=True`, every logged record that has a "run" and an integer "step" is also
    written as TensorBoard scalars (its numeric fields: loss, accuracy, examples_per_s, ...) to
    `path/tensorboard/<run>/`, through Flax's `flax.metrics.tensorboard` writer (TensorFlow and
    TensorBoard, from the `experiments` extra, imported only then).

    In a multi-process run only process 0 writes; the others read what it wrote."""

    def __init__(self, path: str | pathlib.Path, tensorboard: bool = False):
        self.path = pathlib.Path(path)
        self.metrics_path = self.path / "metrics.jsonl"
        self.tensorboard = tensorboard
        self._tail_checked = False  # whether a truncated last record was looked for before appending
        self._writers: dict[str, Any] = {}  # run name -> TensorBoard summary writer
        self.writes = jax.process_index() == 0

    def _file(self, name: str) -> pathlib.Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path / name

    def write_config(self, config: Any) -> None:
        """config.json: the dataclass `config` plus where and how it ran."""
        if not self.writes:
            return
        record = {
            "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config),
            "command": " ".join(sys.argv),
            "jax_version": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
        }
        atomic_write(self._file("config.json"), json.dumps(record, indent=2, default=str) + "\n")

    def read_config(self) -> dict | None:
        """What `write_config` wrote ({"config": {...}, "command": ..., ...}), or None if there is none.

        Our choice: a config.json that is not valid JSON (truncated by an older, non-atomic write or
        edited by hand) is treated as missing, with a warning, so that a rerun can start and rewrite it.
        """
        path = self.path / "config.json"
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text(errors="replace"))
        except json.JSONDecodeError as e:
            warnings.warn(f"{path} is truncated or corrupt ({e}); treated as missing, so the settings of "
                          "earlier runs in this folder are not known", stacklevel=2)
            return None
        if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
            warnings.warn(f"{path} holds no config record; treated as missing", stacklevel=2)
            return None
        return record

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one metrics record (JSON-serialisable values; numpy scalars are converted) as one
        complete line, flushed to disk. The first append drops a truncated last record, if any."""
        if not self.writes:
            return
        line = json.dumps({k: _plain(v) for k, v in record.items()}) + "\n"
        if not self._tail_checked and self.metrics_path.exists():
            text = self.metrics_path.read_text(errors="replace")
            records, complete = self._parse(text)
            if not complete or (text and not text.endswith("\n")):
                self._write_metrics(records)
        self._tail_checked = True
        with self._file(self.metrics_path.name).open("a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        if self.tensorboard:
            self._log_tensorboard(record)

    def _log_tensorboard(self, record: Mapping[str, Any]) -> None:
        """The numeric fields of a record with a "run" and an integer "step", as scalars at that step."""
        run, step = record.get("run"), _plain(record.get("step"))
        if not isinstance(run, str) or not isinstance(step, int) or isinstance(step, bool):
            return
        if run not in self._writers:
            self._writers[run] = _summary_writer(self._file("tensorboard") / _folder_name(run))
        writer = self._writers[run]
        for key, value in record.items():
            value = _plain(value)
            if key not in ("run", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.scalar(key, value, step)
        writer.flush()

    def read_metrics(self) -> list[dict]:
        """The logged records, in order. A truncated or corrupt last line is ignored with a warning
        naming the file and line; a corrupt line before it is a ValueError naming the line."""
        if not self.metrics_path.exists():
            return []
        return self._parse(self.metrics_path.read_text(errors="replace"))[0]

    def drop_metrics(self, run: str, after_step: int) -> None:
        """Forget the records of `run` logged after `after_step` (they are recomputed on resume)."""
        kept = [r for r in self.read_metrics() if not (r.get("run") == run and r.get("step", -1) > after_step)]
        self._write_metrics(kept)

    def _write_metrics(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not self.writes:
            return
        atomic_write(self._file(self.metrics_path.name), "".join(json.dumps(r) + "\n" for r in records))
        self._tail_checked = True

    def _parse(self, text: str) -> tuple[list[dict], bool]:
        """(records, whether the last line was a complete record) of the metrics file's `text`."""
        lines = text.splitlines()
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        records = []
        for i, line in enumerate(lines[: last + 1]):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            elif i < last:
                raise ValueError(f"{self.metrics_path}, line {i + 1}: not a JSON record: {line[:80]!r}")
            else:
                warnings.warn(f"{self.metrics_path}, line {i + 1}: truncated or corrupt last record "
                              f"{line[:80]!r} ignored", stacklevel=3)
                return records, False
        return records, True

    def write_markdown(self, sections: Sequence[str], name: str = "results.md") -> pathlib.Path:
        """Write the Markdown `sections` (joined by blank lines) to `name`."""
        if not self.writes:
            return self.path / name
        out = self._file(name)
        atomic_write(out, "\n\n".join(s.strip() for s in sections) + "\n")
        return out

    def plot(
        self,
        name: str,
        panels: Sequence[Mapping[str, Any]],
        suptitle: str = "",
    ) -> pathlib.Path:
        """Line plots side by side, saved as `name`.png.

        Each panel is a dict with "series" ({label: (xs, ys)} or {label: (xs, ys, yerr)}: error bars)
        and optional "title", "xlabel", "ylabel", "logx", "logy", "ylim", "xticks" (ticks at these
        values, labelled as given), "hlines" ({label: y}: dashed reference lines, e.g. chance).
        Every series gets its own marker and line style, so overlapping lines stay visible; the
        legend sits outside the axes.
        """
        if not self.writes:
            return self.path / f"{name}.png"
        fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 3.8), squeeze=False)
        for ax, panel in zip(axes[0], panels):
            for i, (label, data) in enumerate(panel["series"].items()):
                xs, ys, err = (*data, None) if len(data) == 2 else data
                style = dict(marker=_MARKERS[i % len(_MARKERS)], linestyle=_LINES[i % len(_LINES)],
                             markersize=5, capsize=3, label=label, alpha=0.9)
                ax.errorbar(xs, ys, yerr=err, **style)
            for label, y in panel.get("hlines", {}).items():
                ax.axhline(y, color="grey", linestyle=":", linewidth=1, label=label)
            ax.set_title(panel.get("title", ""), fontsize=10)
            ax.set_xlabel(panel.get("xlabel", ""))
            ax.set_ylabel(panel.get("ylabel", ""))
            if panel.get("logx"):
                ax.set_xscale("log", base=2)
            if panel.get("logy"):
                ax.set_yscale("log")
            if "xticks" in panel:
                ticks = list(panel["xticks"])
                ax.set_xticks(ticks, [str(t) for t in ticks], rotation=45 if len(ticks) > 6 else 0,
                              fontsize=7 if len(ticks) > 6 else None)
                ax.minorticks_off()
            if "ylim" in panel:
                ax.set_ylim(*panel["ylim"])
            ax.grid(alpha=0.3)
            if panel["series"]:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        if suptitle:
            fig.suptitle(suptitle)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        out = self._file(f"{name}.png")
        atomic_write(out, png.getvalue())
        return out


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
_LINES = ("-", "--", "-.", ":")


def _summary_writer(folder: pathlib.Path):
    """Flax's TensorBoard writer for `folder`; TensorFlow is kept off the accelerators (JAX owns them)."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    from flax.metrics import tensorboard

    return tensorboard.SummaryWriter(str(folder))


def _folder_name(run: str) -> str:
    """A run name as one folder name (path separators and spaces replaced)."""
    return "".join(c if c.isalnum() or c in "-_.=," else "_" for c in run) or "_"


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return v.item()
    if hasattr(v, "tolist"):
        return v.tolist()
    return v
