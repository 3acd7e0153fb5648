"""Learning curves from run directories: loss and the monitored metric against epoch.

Used by scripts/plot_runs.py (any runs, a multirun directory) and by every run at its end
(curves.png). A run is a directory with metrics.csv; its label is its overrides from
.hydra/overrides.yaml, less those that every plotted run shares.
"""

from __future__ import annotations

import csv
import math
import textwrap
from pathlib import Path

import yaml

from finetune.safety.errors import FinetuneError


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories under `paths`: each path itself, or its jobs (a multirun directory)."""
    runs: list[Path] = []
    for path in paths:
        if (path / "metrics.csv").is_file():
            runs.append(path)
            continue
        jobs = sorted((p.parent for p in path.rglob("metrics.csv")), key=natural_key)
        if not jobs:
            raise FinetuneError(f"no metrics.csv in {path} or below it; pass a run directory")
        runs.extend(jobs)
    return runs


def natural_key(path: Path) -> list[object]:
    """Sort job directories 0, 1, 2, ..., 10 rather than 0, 1, 10, 2."""
    return [int(part) if part.isdigit() else part for part in path.parts]


def read_metrics(run: Path) -> dict[str, list[float]]:
    """metrics.csv as columns of floats (an empty cell is NaN)."""
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(
                float(value) if value not in ("", None) else math.nan
            )
    return columns


def read_yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def run_labels(runs: list[Path]) -> list[str]:
    """Each run's overrides, without the ones they all share; the directory name otherwise."""
    overrides = [read_yaml(run / ".hydra" / "overrides.yaml") or [] for run in runs]
    shared = set.intersection(*(set(o) for o in overrides)) if len(runs) > 1 else set()
    labels = []
    for run, items in zip(runs, overrides, strict=True):
        label = " ".join(item for item in items if item not in shared)
        # A long label would squeeze the axes to nothing; the full overrides are in .hydra/.
        labels.append(textwrap.shorten(label, width=60, placeholder=" ...") or run.name)
    return labels


def monitored_metric(runs: list[Path], columns: list[dict[str, list[float]]]) -> str | None:
    """The `monitor` of the first run's config, else its first val/ metric other than loss.

    hparams.yaml, not .hydra/config.yaml: the latter keeps `monitor: ${task.monitor}` unresolved.
    """
    config = read_yaml(runs[0] / "hparams.yaml")
    if isinstance(config, dict) and config.get("monitor"):
        return str(config["monitor"])
    names = [k for k in columns[0] if k.startswith("val/") and k != "val/loss"]
    return names[0] if names else None


def plot_runs(paths: list[Path], output: Path, metric: str | None = None) -> Path:
    """Draw loss (train solid, val dashed) and `metric` against epoch, one colour per run."""
    from matplotlib.figure import Figure

    runs = find_runs(paths)
    columns = [read_metrics(run) for run in runs]
    metric = metric or monitored_metric(runs, columns)
    if metric is not None and not any(metric in data for data in columns):
        known = ", ".join(k for k in columns[0] if k not in ("epoch", "step"))
        raise FinetuneError(f"metric {metric} is not in metrics.csv; choose one of: {known}")
    figure = Figure(figsize=(12, 4.8), dpi=100, layout="constrained")
    loss_ax, metric_ax = figure.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for label, data, color in zip(run_labels(runs), columns, colors, strict=True):
        epochs = data.get("epoch", [])
        for key, style in (("train/loss", "-"), ("val/loss", "--")):
            if key in data:
                loss_ax.plot(epochs, data[key], style, color=color, marker=".")
        if metric in data:
            metric_ax.plot(epochs, data[metric], "-", color=color, marker=".", label=label)
    loss_ax.set(title="loss (solid: train/loss, dashed: val/loss)", xlabel="epoch", ylabel="loss")
    metric_ax.set(title=metric or "no validation metric", xlabel="epoch", ylabel=metric or "")
    epochs = sorted({int(e) for data in columns for e in data.get("epoch", []) if e == e})
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        if len(epochs) <= 20:  # whole epochs only, even for a single one
            ax.set_xticks(epochs)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    metric_ax.legend(fontsize=8, loc="best")
    figure.suptitle(f"{len(runs)} run{'s' if len(runs) > 1 else ''}: {common_parent(runs)}")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp.png")
    figure.savefig(tmp)
    tmp.replace(output)  # a reader never sees half a PNG
    return output


def common_parent(runs: list[Path]) -> str:
    import os

    return os.path.commonpath([str(run.resolve()) for run in runs])
