"""Data sets held in memory: image tensors, or PIL images, with their labels."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset


class TensorImages(Dataset):
    """Images as one float tensor in [0, 1], with a per-sample transform set later."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.transform: Any = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        label = self.labels[index]  # a class index, or a 0/1 row of a multi-label set
        return self.transform(self.images[index]), int(label) if label.ndim == 0 else label


class InMemoryImages(Dataset):
    """(PIL image, label) pairs held in memory, with a transform set later."""

    def __init__(self, samples: list[tuple[Image.Image, int]]) -> None:
        self.samples = samples
        self.transform: Any = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.samples[index]
        return self.transform(image), label
