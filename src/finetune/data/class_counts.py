"""How many images each class has in each split: recorded, logged, and warned about.

An imbalanced data set shows itself here first: hparams.yaml and train.log carry the counts,
and a class with fewer than `data.min_val_per_class` validation images gets a warning, since
its validation metrics then say little.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from finetune.data.splits import Splits, labels_of

log = logging.getLogger(__name__)


def class_counts(datasets: dict[str, Dataset], class_names: list[str]) -> dict[str, dict]:
    """{split: {class name: images}} for each split."""
    counts = {}
    for split, dataset in datasets.items():
        labels = labels_of(dataset)
        # Multi-label targets are 0/1 rows: a class's count is the images that carry it.
        if labels.ndim == 2:
            per_class = labels.long().sum(0).tolist()
        else:
            per_class = torch.bincount(labels.long(), minlength=len(class_names)).tolist()
        counts[split] = dict(zip(class_names, per_class, strict=True))
    return counts


def report_class_counts(
    counts: dict[str, dict], min_val_per_class: int, samples: str = "images"
) -> None:
    """Log each split's counts of `samples` (images, texts); warn about classes too small to be
    judged on validation."""
    for split, per_class in counts.items():
        listed = ", ".join(f"{name}: {n}" for name, n in per_class.items())
        log.info("%s %s per class: %s", split, samples, listed)
    few = {name: n for name, n in counts["val"].items() if n < min_val_per_class}
    if few:
        log.warning(
            "classes with fewer than %d validation %s (data.min_val_per_class): %s; their "
            "validation metrics are noise (raise data.val_fraction or add %s)",
            min_val_per_class,
            samples,
            ", ".join(f"{name} ({n})" for name, n in few.items()),
            samples,
        )


def split_class_counts(splits: Splits) -> dict[str, dict]:
    """class_counts of a run's train, val and test splits."""
    datasets = {"train": splits.train, "val": splits.val, "test": splits.test}
    return class_counts(datasets, splits.class_names)
