"""Images listed in a table: `data=image_table data.path=FILE.csv`, columns `file,label`.

For data that does not live in class folders. A file is relative to `data.root` when one is
given, else to the table's own folder (absolute paths stay as they are). An optional `split`
column (train, val, test) fixes the splits; without it they are drawn stratified and seeded
by `data.val_fraction` and `data.test_fraction` (or `data.folds`), as for one class folder.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from finetune.data.folders import BAD_IMAGE_CHOICES, ImageFiles
from finetune.data.splits import Splits, class_index, stratified_split
from finetune.safety.errors import FinetuneError

SPLITS = ("train", "val", "test")


def read_table(cfg: DictConfig) -> list[dict[str, str]]:
    """The table's rows, with the configured file and label columns present and filled."""
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise FinetuneError(f"data.path={cfg.path} is not a file; give a CSV with file,label")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in (cfg.file_column, cfg.label_column) if c not in columns]
        if missing:
            raise FinetuneError(
                f"data.path={cfg.path} has no column {missing[0]} (columns: {columns}); "
                "set data.file_column / data.label_column"
            )
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        if not row[cfg.file_column] or not row[cfg.label_column]:
            raise FinetuneError(f"{cfg.path} line {line}: empty file or label; fill or remove it")
        if "split" in row and row["split"] not in SPLITS:
            raise FinetuneError(
                f"{cfg.path} line {line}: split={row['split']!r} must be one of {SPLITS}"
            )
    if not rows:
        raise FinetuneError(f"data.path={cfg.path} has no rows")
    return rows


def table_class_names(labels: list[str], wanted: object) -> list[str]:
    """Sorted label names, or `data.classes` (names or indices into the sorted names)."""
    names = sorted(set(labels))
    if wanted is None:
        return names
    return [names[class_index(item, names)] for item in wanted]


def image_table_splits(cfg: DictConfig, seed: int) -> Splits:
    """Train, val and test of the table's images."""
    if not cfg.path:
        raise FinetuneError("data=image_table needs data.path=FILE.csv (columns file,label)")
    if cfg.on_bad_image not in BAD_IMAGE_CHOICES:
        raise FinetuneError(
            f"data.on_bad_image={cfg.on_bad_image} must be one of {', '.join(BAD_IMAGE_CHOICES)}"
        )
    rows = read_table(cfg)
    base = Path(cfg.root).expanduser() if cfg.root else Path(cfg.path).expanduser().parent
    class_names = table_class_names([row[cfg.label_column] for row in rows], cfg.classes)
    label_of = {name: i for i, name in enumerate(class_names)}
    rows = [row for row in rows if row[cfg.label_column] in label_of]
    samples = [(str(base / row[cfg.file_column]), label_of[row[cfg.label_column]]) for row in rows]
    missing = [path for path, _ in samples if not Path(path).is_file()]
    if missing:
        raise FinetuneError(
            f"{len(missing)} files of data.path={cfg.path} do not exist, e.g. {missing[0]}; "
            "paths are relative to data.root, or to the table's folder without one"
        )

    def pick(indices: np.ndarray | list[int]) -> ImageFiles:
        return ImageFiles([samples[i] for i in indices], cfg.on_bad_image, cfg.background, base)

    if rows and "split" in rows[0]:
        if cfg.folds is not None:
            raise FinetuneError(
                f"data.folds={cfg.folds} draws its own splits; drop the table's split column"
            )
        chosen = {name: [i for i, r in enumerate(rows) if r["split"] == name] for name in SPLITS}
        has_test = bool(chosen["test"])
        test = chosen["test"] if has_test else chosen["val"]
        source = "test" if has_test else "val (the table has no test rows)"
        return Splits(
            pick(chosen["train"]), pick(chosen["val"]), pick(test), class_names, "pil", source
        )
    labels = np.array([label for _, label in samples])
    train, val, test = stratified_split(labels, cfg, seed)
    return Splits(pick(train), pick(val), pick(test), class_names, "pil")
