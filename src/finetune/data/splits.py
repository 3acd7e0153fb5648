"""Splits of a data set, chosen classes, and the dispatch on `data.name`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from finetune.safety.errors import FinetuneError


@dataclass
class Splits:
    """Train, validation and test sets of one data set, labels 0..len(class_names)-1.

    `kind` says what a sample's image is ("tensor" or "pil"), which decides its transforms;
    the datasets get them once the model's preprocessing is known.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    class_names: list[str]
    kind: str
    test_source: str = "test"  # which split the test metrics really come from
    # Each split's sample indices into the data set, for the split manifest (split.json) of
    # data sets held in memory; image folders are described by their files instead.
    indices: dict[str, list[int]] | None = None

    @property
    def test_is_val(self) -> bool:
        """No test samples of its own: `test` holds the validation samples (test_source says)."""
        return self.test_source != "test"


def check_folds(cfg: DictConfig) -> None:
    """data.folds=K (2 or more) with data.fold in 0..K-1; or no folds and fold 0."""
    folds, fold = cfg.folds, cfg.fold
    if folds is None:
        if fold != 0:
            raise FinetuneError(f"data.fold={fold} needs data.folds=K (k-fold cross-validation)")
        return
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise FinetuneError(f"data.folds={folds} must be an integer of 2 or more (or null)")
    if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < folds:
        raise FinetuneError(f"data.fold={fold} must be one of 0..{folds - 1} (data.folds={folds})")


def select_classes(
    labels: torch.Tensor, class_names: list[str], wanted: Any
) -> tuple[np.ndarray, torch.Tensor, list[str]]:
    """Keep only the `wanted` classes (indices or names), relabelled 0..k-1 in the given order."""
    if wanted is None:
        return np.arange(len(labels)), labels, class_names
    chosen = [class_index(item, class_names) for item in wanted]
    if len(set(chosen)) != len(chosen) or len(chosen) < 2:
        raise FinetuneError(f"data.classes={list(wanted)} must name at least 2 distinct classes")
    remap = {old: new for new, old in enumerate(chosen)}
    indices = np.flatnonzero([int(label) in remap for label in labels])
    new_labels = torch.tensor([remap[int(label)] for label in labels[indices]])
    return indices, new_labels, [class_names[i] for i in chosen]


def class_index(item: Any, class_names: list[str]) -> int:
    """The index of a class given by name or by index."""
    if str(item) in class_names:
        return class_names.index(str(item))
    if isinstance(item, int) and 0 <= item < len(class_names):
        return item
    raise FinetuneError(f"data.classes has {item!r}, which is not one of {class_names}")


def stratified_split(
    labels: np.ndarray, cfg: DictConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, val and test, each class in the same proportion in each split.

    With `data.folds=K` the test split is held out first (the same for every fold), and the
    rest is cut into K stratified folds: fold `data.fold` is validation, the others train.
    """
    from sklearn.model_selection import train_test_split  # seconds to import: only when used

    indices = np.arange(len(labels))
    if cfg.folds is not None:
        return fold_split(labels, cfg, seed)
    held_out = cfg.val_fraction + cfg.test_fraction
    if held_out == 0:
        return indices, indices[:0], indices[:0]
    train, rest = train_test_split(indices, test_size=held_out, stratify=labels, random_state=seed)
    if cfg.test_fraction == 0:
        return train, rest, rest[:0]
    if cfg.val_fraction == 0:
        return train, rest[:0], rest
    val, test = train_test_split(
        rest, test_size=cfg.test_fraction / held_out, stratify=labels[rest], random_state=seed
    )
    return train, val, test


def labels_of(dataset: Dataset) -> torch.Tensor:
    """Every sample's label without loading an image: class indices, or 0/1 rows (multi-label).

    Data sets keep their labels as a tensor (`labels`) or as (path, label) `samples`.
    """
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = getattr(dataset, "dataset", dataset)  # a TrackedDataset wraps the split
        labels = getattr(labels, "labels", None)
    if labels is not None:
        return torch.as_tensor(labels)
    samples = getattr(getattr(dataset, "dataset", dataset), "samples", None)
    if samples is None:
        raise FinetuneError(f"{type(dataset).__name__} lists no labels or samples")
    labels = [label for _, label in samples]
    if labels and isinstance(labels[0], torch.Tensor):
        return torch.stack(labels)
    return torch.as_tensor(labels)


def fold_split(
    labels: np.ndarray, cfg: DictConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train and val of fold `cfg.fold` of `cfg.folds` (stratified, seeded), and the test split."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    indices = np.arange(len(labels))
    rest, test = indices, indices[:0]
    if cfg.test_fraction > 0:
        rest, test = train_test_split(
            indices, test_size=cfg.test_fraction, stratify=labels, random_state=seed
        )
    smallest = np.bincount(labels[rest]).min(initial=len(rest))
    if smallest < cfg.folds:
        raise FinetuneError(
            f"data.folds={cfg.folds} needs at least {cfg.folds} images of each class outside the "
            f"test split, but one class has {smallest}; lower data.folds"
        )
    folds = StratifiedKFold(n_splits=cfg.folds, shuffle=True, random_state=seed)
    train, val = list(folds.split(rest, labels[rest]))[cfg.fold]
    return rest[train], rest[val], test
