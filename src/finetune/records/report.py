"""A run's report, drawn once from the test outputs: what a person opens after training.

    report/
      index.html          everything below and the learning curves, on one page (self-contained)
      confusion.png       counts and row-normalised
      per_class.csv       precision, recall, F1 and support of each class
      top_losses.png/csv  the test images the model got most wrong (text: misclassified.csv)
      reliability.png     accuracy against confidence, before and after temperature scaling
      calibration.json    temperature (fitted on validation), ECE and NLL before and after

Everything is computed from one tensor of logits and the targets, so the numbers agree with
eval.py's metrics on the same data by construction. The engine collects the outputs
(engine/report.py); this module only draws and writes.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional as F

from finetune.records.calibration import (
    expected_calibration_error,
    reliability_figure,
)
from finetune.records.exhibits import ImageExhibits
from finetune.records.visuals import confusion_counts

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class ReportInputs:
    """What the report is drawn from; `logits` and `targets` are the evaluated split's, in order."""

    title: str
    split: str
    class_names: list[str]
    logits: torch.Tensor  # (N, C), float, CPU
    targets: torch.Tensor  # (N,)
    names: list[str]  # a name per sample (its file, or split[index])
    gallery: list[tuple[int, Any]]  # (sample index, image or text) of the top losses
    temperature: float  # fitted on the validation split
    calibration_bins: int
    curves: Path | None  # the run's curves.png, shown when it exists
    # What the samples are (records/exhibits.py: images, or text_report.py: texts).
    exhibits: Any = field(default_factory=ImageExhibits)


def sample_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets, reduction="none")


def top_loss_indices(logits: torch.Tensor, targets: torch.Tensor, count: int) -> list[int]:
    """The `count` samples with the highest loss, highest first (ties: lower index first)."""
    losses = sample_losses(logits, targets).numpy()
    return np.argsort(-losses, kind="stable")[:count].tolist()


def per_class_rows(counts: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    """Precision, recall and F1 of each class from the confusion counts (0 where undefined)."""
    true_pos = np.diag(counts).astype(float)
    predicted, support = counts.sum(axis=0), counts.sum(axis=1)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(true_pos), where=both > 0)
    return [
        {
            "class": name,
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]


def confusion_pair_figure(
    counts: np.ndarray, class_names: list[str], title: str, unit: str = "images"
) -> Figure:
    """Counts on the left, each row divided by its true class's size on the right.

    The counts are written in their cells (up to 20 classes); the fractions are the colours.
    No constrained layout: measuring a few hundred texts for it cost seconds per report.
    """
    from matplotlib.figure import Figure

    n = len(class_names)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.4 * n + 2.0), 20.0)
    figure = Figure(figsize=(2 * side + 1.5, side + 0.6), dpi=90)
    figure.subplots_adjust(left=0.08, right=0.93, bottom=0.12, top=0.9, wspace=0.25)
    for ax, values, label in zip(
        figure.subplots(1, 2), (counts, fractions), ("count", "fraction of the true class"),
        strict=True,
    ):  # fmt: skip
        shown = ax.imshow(values, cmap="Blues", vmin=0, vmax=None if values is counts else 1)
        figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, label=label)
        if n <= 50:
            names = [name[:14] for name in class_names]
            ax.set_xticks(range(n), names, rotation=90 if n > 10 else 0)
            ax.set_yticks(range(n), names)
        ax.set(xlabel="predicted", ylabel="true")
    if n <= 20:
        ax = figure.axes[0]
        top = counts.max() or 1
        for row, col in zip(*np.nonzero(counts), strict=True):
            dark = counts[row, col] > 0.5 * top
            ax.text(col, row, str(counts[row, col]), ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")  # fmt: skip
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    figure.suptitle(f"{title}: {int(counts.sum())} {unit}, accuracy {accuracy:.4f}")
    return figure


def top_loss_rows(inputs: ReportInputs, indices: list[int]) -> list[dict[str, Any]]:
    probs = inputs.logits.float().softmax(dim=1)
    losses = sample_losses(inputs.logits, inputs.targets)
    names = inputs.class_names
    rows = []
    for index in indices:
        predicted = int(probs[index].argmax())
        rows.append(
            {
                "index": index,
                inputs.exhibits.column: inputs.names[index],
                "true": names[int(inputs.targets[index])],
                "predicted": names[predicted],
                "probability": round(float(probs[index, predicted]), 6),
                "true_probability": round(float(probs[index, inputs.targets[index]]), 6),
                "loss": round(float(losses[index]), 6),
            }
        )
    return rows


def calibration_record(inputs: ReportInputs) -> dict[str, Any]:
    logits, targets, t = inputs.logits.float(), inputs.targets, inputs.temperature
    bins = inputs.calibration_bins
    return {
        "temperature": round(t, 6),
        "fitted_on": "val",
        "evaluated_on": inputs.split,
        "bins": bins,
        "ece": round(expected_calibration_error(logits, targets, bins), 6),
        "ece_calibrated": round(expected_calibration_error(logits / t, targets, bins), 6),
        "nll": round(float(F.cross_entropy(logits, targets)), 6),
        "nll_calibrated": round(float(F.cross_entropy(logits / t, targets)), 6),
    }


def write_report(report_dir: Path, inputs: ReportInputs) -> Path:
    """Write every part of the report and index.html; returns the index.html path."""
    from finetune.records.report_page import write_page

    report_dir.mkdir(parents=True, exist_ok=True)
    n = len(inputs.class_names)
    preds = inputs.logits.argmax(dim=1)
    counts = confusion_counts(inputs.targets.long(), preds.long(), n)
    exhibits = inputs.exhibits
    confusion = confusion_pair_figure(counts, inputs.class_names, inputs.title, exhibits.noun)
    pictures = {
        "confusion": figure_png(confusion),
        "reliability": figure_png(
            reliability_figure(
                inputs.logits, inputs.targets, inputs.calibration_bins, inputs.temperature
            )
        ),
    }
    classes = per_class_rows(counts, inputs.class_names)
    write_csv(report_dir / "per_class.csv", classes)
    losses = exhibits.listed(top_loss_rows(inputs, [index for index, _ in inputs.gallery]))
    write_csv(report_dir / exhibits.table_file, losses)
    sheet = exhibits.sheet(losses, dict(inputs.gallery))
    if sheet is not None:
        pictures["top_losses"] = sheet
    calibration = calibration_record(inputs)
    write_bytes(
        report_dir / "calibration.json", (json.dumps(calibration, indent=2) + "\n").encode()
    )
    np.savetxt(report_dir / "confusion.csv", counts, fmt="%d", delimiter=",",
               header=",".join(inputs.class_names), comments="")  # fmt: skip
    for name, png in pictures.items():
        write_bytes(report_dir / f"{name}.png", png)
    if inputs.curves is not None and inputs.curves.is_file():
        pictures["curves"] = inputs.curves.read_bytes()
    summary = {
        "accuracy": float(np.trace(counts) / max(counts.sum(), 1)),
        "macro F1": float(np.mean([row["f1"] for row in classes])),
        "loss": calibration["nll"],
        "ECE": calibration["ece"],
        "temperature (fitted on val)": calibration["temperature"],
        "ECE at that temperature": calibration["ece_calibrated"],
        exhibits.noun: int(counts.sum()),
    }
    table = (exhibits.heading, exhibits.column)
    return write_page(
        report_dir / "index.html", inputs.title, summary, pictures, classes, losses, table
    )


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    write_bytes(path, buffer.getvalue().encode())


def write_bytes(path: Path, data: bytes) -> None:
    """To a temporary name, then renamed: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
