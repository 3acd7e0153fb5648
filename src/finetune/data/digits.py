"""scikit-learn's bundled digits (1,797 8x8 images, 10 classes): the embedded default.

It ships with scikit-learn, so the default run and the tests need no download.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from finetune.data.splits import Splits, select_classes, stratified_split
from finetune.data.tensors import TensorImages


def digits_splits(cfg: DictConfig, seed: int) -> Splits:
    """Digits as 3-channel images in [0, 1], split stratified and seeded."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = images.expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target)
    indices, labels, class_names = select_classes(labels, [str(d) for d in range(10)], cfg.classes)
    images = images[indices]
    train_idx, val_idx, test_idx = stratified_split(labels.numpy(), cfg, seed)

    def subset(idx: np.ndarray) -> TensorImages:
        return TensorImages(images[idx], labels[idx])

    chosen = {"train": train_idx, "val": val_idx, "test": test_idx}
    return Splits(
        subset(train_idx),
        subset(val_idx),
        subset(test_idx),
        class_names,
        "tensor",
        # Indices into scikit-learn's digits, for the split manifest.
        indices={name: indices[idx].tolist() for name, idx in chosen.items()},
    )
