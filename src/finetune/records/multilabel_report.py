"""A multi-label run's report: each label a yes/no decision at `task.threshold`.

    report/
      index.html          everything below and the learning curves, on one page (self-contained)
      per_label.csv       precision, recall, F1, support (true positives) and average precision
      confusion.png/csv   each label's TN, FP, FN, TP: counts, and as shares of the true condition
      top_losses.png/csv  the images with the highest binary cross-entropy (mean over labels)
      reliability.png     accuracy of the yes/no decisions against their confidence
      calibration.json    temperature (fitted on validation), ECE and NLL before and after

Each label's decision is the 2-class logit pair (0, z): its softmax is (1 - sigmoid(z),
sigmoid(z)), so calibration (ECE, temperature scaling, the reliability diagram) is the
classification report's, over every (image, label) decision; `predict.temperature=auto`
divides z by the same T. Per-label figures are those of test/f1_macro and test/map
(torchmetrics, the same threshold). The engine collects the outputs
(engine/multilabel_report.py); this module only draws and writes.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional as F

from finetune.records.calibration import expected_calibration_error, reliability_figure
from finetune.records.gallery import Tile, draw_sheet
from finetune.records.report import figure_png, write_bytes, write_csv
from finetune.records.report_page import data_url, render, write_html

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

CELLS = ("TN", "FP", "FN", "TP")


@dataclass
class LabelReportInputs:
    """What the report is drawn from; `logits` and `targets` are the split's, in order."""

    title: str
    split: str
    label_names: list[str]
    threshold: float
    logits: torch.Tensor  # (N, C), float, CPU
    targets: torch.Tensor  # (N, C), 0/1
    names: list[str]  # a name per image (its file, or split[index])
    gallery: list[tuple[int, Image.Image]]  # (position, image) of the top losses
    temperature: float  # fitted on the validation split's decisions
    calibration_bins: int
    curves: Path | None  # the run's curves.png, shown when it exists


def decision_logits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every (image, label) decision as a 2-class logit pair (0, z) and its 0/1 target."""
    z = logits.float().reshape(-1, 1)
    return torch.cat([torch.zeros_like(z), z], dim=1), targets.reshape(-1).long()


def sample_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each image's binary cross-entropy, averaged over its labels (as test/loss)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return bce.mean(dim=1)


def top_loss_positions(logits: torch.Tensor, targets: torch.Tensor, count: int) -> list[int]:
    """The `count` images with the highest loss, highest first (ties: lower index first)."""
    return np.argsort(-sample_losses(logits, targets).numpy(), kind="stable")[:count].tolist()


def label_counts(decided: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """(C, 4) counts of TN, FP, FN, TP per label."""
    truth, decided = targets.bool(), decided.bool()
    cells = [~truth & ~decided, ~truth & decided, truth & ~decided, truth & decided]
    return torch.stack([cell.sum(dim=0) for cell in cells], dim=1).numpy()


def label_rows(inputs: LabelReportInputs, counts: np.ndarray) -> list[dict[str, Any]]:
    """Precision, recall and F1 at the threshold (0 where undefined), support, and AP."""
    from torchmetrics.functional.classification import multilabel_average_precision

    n = len(inputs.label_names)
    probs = inputs.logits.float().sigmoid()
    ap = multilabel_average_precision(probs, inputs.targets.long(), n, average="none")
    _, fp, fn, tp = (counts[:, i].astype(float) for i in range(4))
    rows = []
    for i, name in enumerate(inputs.label_names):
        precision = tp[i] / (tp[i] + fp[i]) if tp[i] + fp[i] else 0.0
        recall = tp[i] / (tp[i] + fn[i]) if tp[i] + fn[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "class": name,
                "precision": round(precision, 6),
                "recall": round(recall, 6),
                "f1": round(f1, 6),
                "support": int(tp[i] + fn[i]),
                "average_precision": round(float(ap[i]), 6),
            }
        )
    return rows


def confusion_figure(counts: np.ndarray, label_names: list[str], title: str) -> Figure:
    """Each label's TN, FP, FN, TP as counts (left) and as shares of its true condition (right:
    TN and FP of the negatives, FN and TP of the positives)."""
    from matplotlib.figure import Figure

    negatives = np.maximum(counts[:, :2].sum(axis=1, keepdims=True), 1)
    positives = np.maximum(counts[:, 2:].sum(axis=1, keepdims=True), 1)
    shares = np.hstack([counts[:, :2] / negatives, counts[:, 2:] / positives])
    n = len(label_names)
    height = min(max(3.0, 0.35 * n + 1.5), 20.0)
    figure = Figure(figsize=(10, height), dpi=90)
    figure.subplots_adjust(left=0.14, right=0.95, bottom=0.08, top=0.88, wspace=0.45)
    for ax, values, label in zip(
        figure.subplots(1, 2), (counts, shares), ("count", "share of the true condition"),
        strict=True,
    ):  # fmt: skip
        shown = ax.imshow(values, cmap="Blues", vmin=0, aspect="auto",
                          vmax=None if values is counts else 1)  # fmt: skip
        figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, label=label)
        ax.set_xticks(range(4), CELLS)
        if n <= 50:
            ax.set_yticks(range(n), [name[:14] for name in label_names])
    if n <= 30:
        top = counts.max() or 1
        for row, col in zip(*np.nonzero(counts), strict=True):
            figure.axes[0].text(col, row, str(counts[row, col]), ha="center", va="center",
                                fontsize=7, color="white" if counts[row, col] > 0.5 * top
                                else "black")  # fmt: skip
    figure.suptitle(f"{title}: {int(counts[0].sum())} images, {n} labels")
    return figure


def top_loss_rows(inputs: LabelReportInputs, positions: list[int]) -> list[dict[str, Any]]:
    probs = inputs.logits.float().sigmoid()
    losses = sample_losses(inputs.logits, inputs.targets)
    rows = []
    for position in positions:
        decided = probs[position] >= inputs.threshold
        rows.append(
            {
                "index": position,
                "file": inputs.names[position],
                "true": label_text(inputs.targets[position].bool(), inputs.label_names),
                "predicted": label_text(decided, inputs.label_names),
                "wrong_labels": int((decided != inputs.targets[position].bool()).sum()),
                "loss": round(float(losses[position]), 6),
            }
        )
    return rows


def label_text(chosen: torch.Tensor, label_names: list[str]) -> str:
    return "+".join(n for n, c in zip(label_names, chosen.tolist(), strict=True) if c) or "(none)"


def top_loss_sheet(rows: list[dict[str, Any]], images: dict[int, Image.Image]) -> Image.Image:
    tiles = [
        Tile(
            images[row["index"]],
            [f"pred {row['predicted']}", f"true {row['true']}", f"loss {row['loss']:.3f}"],
            row["wrong_labels"] == 0,
        )
        for row in rows
        if row["index"] in images
    ]
    return draw_sheet(tiles)


def calibration_record(inputs: LabelReportInputs) -> dict[str, Any]:
    logits, targets = decision_logits(inputs.logits, inputs.targets)
    t, bins = inputs.temperature, inputs.calibration_bins
    return {
        "temperature": round(t, 6),
        "fitted_on": "val",
        "evaluated_on": inputs.split,
        "decisions": "each (image, label)",
        "bins": bins,
        "ece": round(expected_calibration_error(logits, targets, bins), 6),
        "ece_calibrated": round(expected_calibration_error(logits / t, targets, bins), 6),
        "nll": round(float(F.cross_entropy(logits, targets)), 6),
        "nll_calibrated": round(float(F.cross_entropy(logits / t, targets)), 6),
    }


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>{{ style }}</style></head><body>
<h1>{{ title }}</h1>
<table>{% for key, value in summary.items() %}
<tr><th>{{ key }}</th><td>{{ value | fmt }}</td></tr>{% endfor %}
</table>
{% if "curves" in pictures %}<h2>Learning curves</h2>
<img alt="learning curves" src="{{ pictures.curves }}">{% endif %}
<h2>Per label</h2>
<table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th>
<th>average precision</th></tr>
{% for row in labels %}<tr><td class="text">{{ row["class"] }}</td>
<td>{{ row.precision | fmt }}</td><td>{{ row.recall | fmt }}</td><td>{{ row.f1 | fmt }}</td>
<td>{{ row.support }}</td><td>{{ row.average_precision | fmt }}</td></tr>
{% endfor %}</table>
<h2>Each label's decisions (TN, FP, FN, TP)</h2>
<img alt="confusion per label" src="{{ pictures.confusion }}">
<h2>Top losses: the images the model got most wrong</h2>
{% if "top_losses" in pictures %}<img alt="top losses" src="{{ pictures.top_losses }}">{% endif %}
<table><tr><th>file</th><th>true</th><th>predicted</th><th>wrong labels</th><th>loss</th></tr>
{% for row in losses %}<tr class="{{ 'wrong' if row.wrong_labels }}">
<td class="text">{{ row.file }}</td><td class="text">{{ row.true }}</td>
<td class="text">{{ row.predicted }}</td><td>{{ row.wrong_labels }}</td>
<td>{{ row.loss | fmt }}</td></tr>
{% endfor %}</table>
<h2>Calibration of the yes/no decisions</h2>
<img alt="reliability diagram" src="{{ pictures.reliability }}">
</body></html>
"""


def write_label_report(report_dir: Path, inputs: LabelReportInputs) -> Path:
    """Write every part of the report and index.html; returns the index.html path."""
    report_dir.mkdir(parents=True, exist_ok=True)
    decided = inputs.logits.float().sigmoid() >= inputs.threshold
    counts = label_counts(decided, inputs.targets)
    labels = label_rows(inputs, counts)
    write_csv(report_dir / "per_label.csv", labels)
    np.savetxt(report_dir / "confusion.csv", counts, fmt="%d", delimiter=",",
               header=",".join(CELLS), comments="")  # fmt: skip
    pair_logits, pair_targets = decision_logits(inputs.logits, inputs.targets)
    reliability = reliability_figure(
        pair_logits, pair_targets, inputs.calibration_bins, inputs.temperature, "decisions"
    )
    pictures = {
        "confusion": figure_png(confusion_figure(counts, inputs.label_names, inputs.title)),
        "reliability": figure_png(reliability),
    }
    losses = top_loss_rows(inputs, [position for position, _ in inputs.gallery])
    write_csv(report_dir / "top_losses.csv", losses)
    if losses:
        buffer = io.BytesIO()
        top_loss_sheet(losses, dict(inputs.gallery)).save(buffer, format="PNG")
        pictures["top_losses"] = buffer.getvalue()
    calibration = calibration_record(inputs)
    write_bytes(
        report_dir / "calibration.json", (json.dumps(calibration, indent=2) + "\n").encode()
    )
    for name, png in pictures.items():
        write_bytes(report_dir / f"{name}.png", png)
    if inputs.curves is not None and inputs.curves.is_file():
        pictures["curves"] = inputs.curves.read_bytes()
    summary = {
        "exact match": float((decided == inputs.targets.bool()).all(dim=1).float().mean()),
        "macro F1": float(np.mean([row["f1"] for row in labels])),
        "mean average precision": float(np.mean([row["average_precision"] for row in labels])),
        "loss": float(sample_losses(inputs.logits, inputs.targets).mean()),
        "threshold": inputs.threshold,
        "ECE (decisions)": calibration["ece"],
        "temperature (fitted on val)": calibration["temperature"],
        "ECE at that temperature": calibration["ece_calibrated"],
        "images": len(inputs.names),
    }
    urls = {name: data_url(png) for name, png in pictures.items()}
    html = render(
        PAGE, title=inputs.title, summary=summary, pictures=urls, labels=labels, losses=losses
    )
    return write_html(report_dir / "index.html", html)
