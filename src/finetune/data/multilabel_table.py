"""Images listed in a table with their labels: multi-label data from a CSV.

    file,labels
    img/001.jpg,cat dog
    img/002.jpg,dog|ball

Labels are separated by a space or `|`; an image may have none. Files are relative to
`data.root` (default: the table's folder). The label names, sorted, are the classes. Splits are
seeded: random, since multi-label sets cannot be stratified by one class.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from finetune.data.folders import ImageFiles
from finetune.data.splits import Splits
from finetune.safety.errors import FinetuneError

LABEL_SEPARATORS = re.compile(r"[ |]+")


def multilabel_table_splits(cfg: DictConfig, seed: int) -> Splits:
    if cfg.folds is not None:
        raise FinetuneError(
            f"data.folds={cfg.folds} is not supported by data=multilabel_table (folds are "
            "stratified by one class, which a multi-label set does not have); leave it null"
        )
    path = Path(str(cfg.path)).expanduser() if cfg.path else None
    if path is None or not path.is_file():
        raise FinetuneError(
            f"data.path={cfg.path}: data=multilabel_table needs a CSV file with the columns "
            f"{cfg.file_column},{cfg.labels_column}"
        )
    root = Path(str(cfg.root)).expanduser() if cfg.root else path.parent
    files, label_sets = read_table(path, cfg.file_column, cfg.labels_column)
    names = sorted({label for labels in label_sets for label in labels})
    if len(names) < 2:
        raise FinetuneError(
            f"{path} names {len(names)} label(s); a multi-label task needs 2 or more"
        )
    targets = torch.zeros(len(files), len(names))
    for row, labels in enumerate(label_sets):
        targets[row, [names.index(label) for label in labels]] = 1.0
    samples = [(str(root / file), targets[row]) for row, file in enumerate(files)]
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = int(round(cfg.val_fraction * len(samples)))
    n_test = int(round(cfg.test_fraction * len(samples)))
    val, test, train = np.split(order, [n_val, n_val + n_test])

    def pick(idx: np.ndarray) -> ImageFiles:
        return ImageFiles([samples[i] for i in idx], cfg.on_bad_image, cfg.background, root)

    test_source = "test" if n_test else "val (data.test_fraction is 0)"
    return Splits(pick(train), pick(val), pick(test if n_test else val), names, "pil", test_source)


def read_table(
    path: Path, file_column: str, labels_column: str
) -> tuple[list[str], list[list[str]]]:
    """(file names, label lists) from a CSV with a header row."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in (file_column, labels_column) if c not in columns]
        if missing:
            raise FinetuneError(
                f"{path} has no column {', '.join(missing)}; its columns are {columns} "
                "(set data.file_column and data.labels_column)"
            )
        rows = list(reader)
    if not rows:
        raise FinetuneError(f"{path} has a header but no rows")
    files = [row[file_column] for row in rows]
    labels = [[x for x in LABEL_SEPARATORS.split(row[labels_column] or "") if x] for row in rows]
    return files, labels
