"""CIFAR-10 through torchvision, downloaded only when `data.download=true`."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from finetune.data.splits import Splits, select_classes, stratified_split
from finetune.data.tensors import InMemoryImages
from finetune.safety.errors import FinetuneError


def cifar10_splits(cfg: DictConfig, seed: int) -> Splits:
    """CIFAR-10's train set split into train and val, and its own test set."""
    from torchvision.datasets import CIFAR10

    try:
        train_full = CIFAR10(cfg.root, train=True, download=cfg.download)
        test_full = CIFAR10(cfg.root, train=False, download=cfg.download)
    except RuntimeError as error:
        raise FinetuneError(
            f"CIFAR-10 not found under data.root={cfg.root} ({error}); add data.download=true "
            "to download it (needs internet)"
        ) from None
    train_idx_all, train_labels, names = select_classes(
        torch.tensor(train_full.targets), list(train_full.classes), cfg.classes
    )
    test_idx, test_labels, _ = select_classes(
        torch.tensor(test_full.targets), list(train_full.classes), cfg.classes
    )
    train_idx, val_idx, _ = stratified_split(train_labels.numpy(), cfg, seed)

    def images(data: np.ndarray, idx: np.ndarray, labels: torch.Tensor) -> InMemoryImages:
        return InMemoryImages(
            [(Image.fromarray(data[i]), int(labels[j])) for j, i in enumerate(idx)]
        )

    pool = images(train_full.data, train_idx_all, train_labels)
    return Splits(
        InMemoryImages([pool.samples[i] for i in train_idx]),
        InMemoryImages([pool.samples[i] for i in val_idx]),
        images(test_full.data, test_idx, test_labels),
        names,
        "pil",
        # Indices into CIFAR-10's own train and test sets.
        indices={
            "train": train_idx_all[train_idx].tolist(),
            "val": train_idx_all[val_idx].tolist(),
            "test": np.asarray(test_idx).tolist(),
        },
    )
