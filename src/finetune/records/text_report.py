"""The report's text pieces: token ids padded per batch, the misclassified texts as a table.

A text report is the image report (records/report.py) with texts where the images were:
the same confusion matrix, per-class CSV and calibration, and instead of a contact sheet the
misclassified examples (text, true, predicted, probability, loss; highest loss first) in
misclassified.csv and in index.html.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch.utils.data import Dataset

from finetune.data.text import collate_texts


class TextExhibits:
    """Texts: listed in a table; nothing to draw."""

    noun = "texts"
    column = "text"
    table_file = "misclassified.csv"
    heading = "Misclassified texts, highest loss first"

    def __init__(self, pad_id: int) -> None:
        self.collate = partial(collate_texts, pad_id=pad_id)  # (ids, targets, indices)

    def names(self, dataset: Dataset, split: str, indices: torch.Tensor) -> list[str]:
        """Each sample's text (the first of a pair, " [SEP] " and the second)."""
        texts, pairs = dataset.texts, dataset.pairs  # type: ignore[attr-defined]
        if pairs is None:
            return [texts[i] for i in indices.tolist()]
        return [f"{texts[i]} [SEP] {pairs[i]}" for i in indices.tolist()]

    def exhibit(self, dataset: Dataset, index: int, prep: Any) -> str:
        return dataset.texts[index]  # type: ignore[attr-defined]

    def listed(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The misclassified rows only (the top losses the model got right are left out)."""
        return [row for row in rows if row["true"] != row["predicted"]]

    def sheet(self, rows: list[dict[str, Any]], exhibits: dict[int, Any]) -> None:
        return None
