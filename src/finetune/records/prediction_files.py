"""What predict.py leaves: predictions.csv, a contact sheet, and the list of unreadable inputs.

The CSV's probabilities are written with six decimals and the rows in input order, so the same
input and model give the same file byte for byte.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from finetune.records.gallery import Tile, draw_sheet, save_png


def add_truth(rows: list[dict[str, Any]], truths: list[str | None]) -> None:
    """`true`, and `correct` where the row has a top label to judge (single-label tasks)."""
    for row, truth in zip(rows, truths, strict=True):
        row["true"] = truth
        if "label_1" in row:
            row["correct"] = int(row["label_1"] == truth)


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
        lines = [
            f"pred {row['label_1']} {float(row['prob_1']):.2f}"
            if "label_1" in row
            else str(row.get("labels", ""))
        ]
        if "true" in row:
            lines.append(f"true {row['true']}")
        lines.append(Path(row["file"]).name)
        correct = bool(row["correct"]) if "correct" in row else None
        tiles.append(Tile(picture, lines, correct))
    return save_png(draw_sheet(tiles), path)
