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
        self.batch_transform: Any = None  # the eval transform: a batch as each sample

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        return self.transform(self.images[index]), self.label(index)

    def label(self, index: int) -> Any:
        """A class index (int), or a 0/1 row of a multi-label set."""
        label = self.labels[index]
        return int(label) if label.ndim == 0 else label

    def in_one_piece(self, indices: list[int]) -> bool:
        """Whether these samples load as one tensor operation: under the eval transform, or a
        training transform whose batches are bitwise its samples (data/shift_rotate.py)."""
        if self.transform is None:
            return False
        return self.transform is self.batch_transform or getattr(
            self.transform, "batches_as_samples", False
        )

    def load_batch(self, indices: list[int]) -> list[tuple[torch.Tensor, Any]]:
        """Samples that are `in_one_piece`, bitwise as one by one (data/tracking.py)."""
        inputs = self.transform(self.images[indices])
        return [(x, self.label(i)) for x, i in zip(inputs.unbind(0), indices, strict=True)]


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
