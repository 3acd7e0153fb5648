"""What predict.py leaves: predictions.csv, a contact sheet, and the list of unreadable inputs.

The CSV's probabilities are written with six decimals and the rows in input order, so the same
input and model give the same file byte for byte.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch

from finetune.records.gallery import Tile, draw_sheet, save_png


def classification_rows(
    names: list[str],
    probs: torch.Tensor,
    class_names: list[str],
    top_k: int,
    truths: list[str | None] | None,
) -> list[dict[str, Any]]:
    """One row per input: file, top-k labels and probabilities; true and correct when known.

    Shaped as a task's `prediction_rows(names, outputs)` (DESIGN.md) for classification.
    """
    k = min(top_k, len(class_names))
    values, indices = probs.float().topk(k, dim=1)
    rows = []
    for i, name in enumerate(names):
        row: dict[str, Any] = {"file": name}
        for rank in range(k):
            row[f"label_{rank + 1}"] = class_names[int(indices[i, rank])]
            row[f"prob_{rank + 1}"] = f"{float(values[i, rank]):.6f}"
        if truths is not None:
            row["true"] = truths[i]
            row["correct"] = int(row["label_1"] == truths[i])
        rows.append(row)
    return rows


def rows_csv(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def write_rows(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(rows_csv(rows, columns))
    tmp.replace(path)
    return path


def contact_sheet(path: Path, files: list[Path], rows: list[dict[str, Any]]) -> Path:
    """The inputs with their predicted label and probability; red when wrong, green when right."""
    from PIL import Image

    tiles = []
    for file, row in zip(files, rows, strict=True):
        with Image.open(file) as image:
            picture = image.convert("RGB")
        lines = [f"pred {row['label_1']} {float(row['prob_1']):.2f}"]
        if "true" in row:
            lines.append(f"true {row['true']}")
        lines.append(Path(row["file"]).name)
        correct = bool(row["correct"]) if "correct" in row else None
        tiles.append(Tile(picture, lines, correct))
    return save_png(draw_sheet(tiles), path)
