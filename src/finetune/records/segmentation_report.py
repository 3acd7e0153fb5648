"""A segmentation run's report, drawn from a pass counted pixel by pixel.

    report/
      index.html          everything below and the learning curves, on one page (self-contained)
      per_class.csv       IoU, precision, recall, F1 and support (labelled pixels) of each class
      confusion.png/csv   pixel counts and row-normalised (labelled pixels only)
      worst_images.png    the images with the lowest IoU: image | true | predicted
      worst_images.csv    their files, IoU and the classes each mask shows

The engine collects the pass and computes the IoU figures with the epoch metrics' own functions
(engine/segmentation_report.py, tasks/confusion_metrics.py), so per_class.csv and the mean IoU
agree with test/iou_<class> and test/miou; this module only draws and writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from finetune.records.gallery import Tile, draw_sheet
from finetune.records.overlays import palette
from finetune.records.prediction_masks import blended
from finetune.records.report import (
    confusion_pair_figure,
    figure_png,
    per_class_rows,
    write_bytes,
    write_csv,
)
from finetune.records.report_page import data_url, render, write_html

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class MaskReportInputs:
    title: str
    split: str
    class_names: list[str]
    ignore_index: int
    counts: np.ndarray  # (C, C) pixel counts, [true, predicted]
    class_iou: list[float]  # each class's IoU, as test/iou_<class>
    mean_iou: float  # as test/miou
    ious: torch.Tensor  # (N,) each image's IoU, in split order
    preds: torch.Tensor  # (N, H, W) predicted masks
    names: list[str]  # a name per image (its file, or split[index])
    gallery: list[tuple[int, Image.Image, torch.Tensor]]  # (position, image, true mask)
    curves: Path | None  # the run's curves.png, shown when it exists


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>{{ style }}</style></head><body>
<h1>{{ title }}</h1>
<table>{% for key, value in summary.items() %}
<tr><th>{{ key }}</th><td>{{ value | fmt }}</td></tr>{% endfor %}
</table>
{% if "curves" in pictures %}<h2>Learning curves</h2>
<img alt="learning curves" src="{{ pictures.curves }}">{% endif %}
<h2>Per class (pixels)</h2>
<table><tr><th>class</th><th>IoU</th><th>precision</th><th>recall</th><th>F1</th>
<th>support (pixels)</th></tr>
{% for row in classes %}<tr><td class="text">{{ row["class"] }}</td><td>{{ row.iou | fmt }}</td>
<td>{{ row.precision | fmt }}</td><td>{{ row.recall | fmt }}</td><td>{{ row.f1 | fmt }}</td>
<td>{{ row.support }}</td></tr>
{% endfor %}</table>
<h2>Pixel confusion matrix</h2>
<img alt="pixel confusion matrix" src="{{ pictures.confusion }}">
<h2>Worst images: the lowest IoU (image | true | predicted)</h2>
{% if "worst_images" in pictures %}
<img alt="worst images" src="{{ pictures.worst_images }}">{% endif %}
<table><tr><th>file</th><th>IoU</th><th>true</th><th>predicted</th></tr>
{% for row in worst %}<tr><td class="text">{{ row.file }}</td><td>{{ row.iou | fmt }}</td>
<td class="text">{{ row.true }}</td><td class="text">{{ row.predicted }}</td></tr>
{% endfor %}</table>
</body></html>
"""


def class_rows(
    counts: np.ndarray, class_names: list[str], class_iou: list[float]
) -> list[dict[str, Any]]:
    """per_class.csv: each class's IoU, then precision, recall, F1 and pixel support."""
    rows = per_class_rows(counts, class_names)
    return [
        {"class": row["class"], "iou": round(float(value), 6), **row}
        for row, value in zip(rows, class_iou, strict=True)
    ]


def shown_classes(mask: torch.Tensor, class_names: list[str], ignore: int) -> str:
    present = [int(c) for c in mask.unique() if int(c) != ignore]
    return "+".join(class_names[c] for c in present) or "(none)"


def worst_rows(inputs: MaskReportInputs) -> list[dict[str, Any]]:
    names, ignore = inputs.class_names, inputs.ignore_index
    return [
        {
            "file": inputs.names[position],
            "iou": round(float(inputs.ious[position]), 6),
            "true": shown_classes(truth, names, ignore),
            "predicted": shown_classes(inputs.preds[position], names, ignore),
        }
        for position, _, truth in inputs.gallery
    ]


def worst_sheet(inputs: MaskReportInputs, rows: list[dict[str, Any]]) -> Image.Image:
    """Three tiles per image (image | true | predicted), two images a row."""
    colours, ignore = palette(len(inputs.class_names)), inputs.ignore_index
    tiles = []
    for (position, image, truth), row in zip(inputs.gallery, rows, strict=True):
        predicted = inputs.preds[position]
        tiles += [
            Tile(image, [f"IoU {row['iou']:.3f}", Path(row["file"]).name], None),
            Tile(blended(image, truth, colours, ignore), ["true", row["true"]], None),
            Tile(blended(image, predicted, colours, ignore), ["predicted", row["predicted"]], None),
        ]
    return draw_sheet(tiles, per_row=6)


def write_mask_report(report_dir: Path, inputs: MaskReportInputs) -> Path:
    """Write every part of the report and index.html; returns the index.html path."""
    import io

    report_dir.mkdir(parents=True, exist_ok=True)
    names, counts = inputs.class_names, inputs.counts
    classes = class_rows(counts, names, inputs.class_iou)
    write_csv(report_dir / "per_class.csv", classes)
    np.savetxt(report_dir / "confusion.csv", counts, fmt="%d", delimiter=",",
               header=",".join(names), comments="")  # fmt: skip
    figure = confusion_pair_figure(counts, names, inputs.title, unit="pixels")
    pictures = {"confusion": figure_png(figure)}
    worst = worst_rows(inputs)
    write_csv(report_dir / "worst_images.csv", worst)
    if worst:
        buffer = io.BytesIO()
        worst_sheet(inputs, worst).save(buffer, format="PNG")
        pictures["worst_images"] = buffer.getvalue()
    for name, png in pictures.items():
        write_bytes(report_dir / f"{name}.png", png)
    if inputs.curves is not None and inputs.curves.is_file():
        pictures["curves"] = inputs.curves.read_bytes()
    summary = {
        "mean IoU": inputs.mean_iou,
        "pixel accuracy": float(np.trace(counts) / max(counts.sum(), 1)),
        "mean image IoU": float(inputs.ious.mean()),
        "images": len(inputs.ious),
        "labelled pixels": int(counts.sum()),
    }
    urls = {name: data_url(png) for name, png in pictures.items()}
    html = render(
        PAGE, title=inputs.title, summary=summary, pictures=urls, classes=classes, worst=worst
    )
    return write_html(report_dir / "index.html", html)
