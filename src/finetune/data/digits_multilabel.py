"""Multi-label digits, the embedded multi-label set: 2x2 canvases of scikit-learn's digits.

Each 16x16 image holds one to three digits in its four 8x8 corners; its labels are the digits
it shows. The canvases of each split are drawn only from that split's digits (a stratified,
seeded split of the 1,797 digits), so no digit seen in training appears in validation or test,
and they are a function of the seed alone: no download, the same set on every machine.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from finetune.data.splits import Splits, stratified_split
from finetune.data.tensors import TensorImages
from finetune.safety.errors import FinetuneError

SLOTS = ((0, 0), (0, 8), (8, 0), (8, 8))  # top-left corners of the four 8x8 slots


def digits_multilabel_splits(cfg: DictConfig, seed: int) -> Splits:
    if cfg.folds is not None:
        raise FinetuneError(
            f"data.folds={cfg.folds} is not supported by data=digits_multilabel (folds are "
            "stratified by one class, which a multi-label set does not have); leave it null"
        )
    from sklearn.datasets import load_digits

    if cfg.classes is not None:
        raise FinetuneError(
            "data.classes is not supported by data=digits_multilabel; leave it null"
        )
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = digits.target
    parts = stratified_split(labels, cfg, seed)
    rng = np.random.default_rng(seed)
    canvases = [
        compose(images[idx], labels[idx], cfg.canvases_per_digit, cfg.max_digits, rng)
        for idx in parts
    ]
    names = [str(d) for d in range(10)]
    return Splits(*canvases, names, "tensor")


def compose(
    pool: torch.Tensor,
    labels: np.ndarray,
    per_digit: float,
    max_digits: int,
    rng: np.random.Generator,
) -> TensorImages:
    """`per_digit * len(pool)` canvases of 1..max_digits digits from `pool`, in random slots."""
    count = int(round(per_digit * len(pool)))
    canvases = torch.zeros(count, 3, 16, 16)
    targets = torch.zeros(count, 10)
    for i in range(count):
        shown = rng.integers(1, max_digits + 1)
        slots = rng.choice(len(SLOTS), size=shown, replace=False)
        for slot, pick in zip(slots, rng.integers(0, len(pool), size=shown), strict=True):
            top, left = SLOTS[slot]
            canvases[i, :, top : top + 8, left : left + 8] = pool[pick]
            targets[i, labels[pick]] = 1.0
    return TensorImages(canvases, targets)
