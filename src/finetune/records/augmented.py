"""A grid of augmented training images at a run's start: what the model is really fed.

Logged once as `train/augmented` (TensorBoard, W&B), after the recipe's per-image transforms
and its batch mixing. Drawing the images must not move any random stream a run trains with,
so every generator is put back as it was: the run computes what it would without the grid.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from finetune.records.loggers import Loggers

TAG = "train/augmented"


@contextlib.contextmanager
def random_streams_kept() -> Iterator[None]:
    """torch (CPU and CUDA), numpy and python's generators, restored on the way out."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def augmented_batch(dataset: Dataset, count: int, mixer: Any | None) -> torch.Tensor | None:
    """The first `count` training images as the loop would see them (None if unreadable)."""
    with random_streams_kept():
        samples = [dataset[i] for i in range(min(count, len(dataset)))]
        samples = [sample for sample in samples if sample is not None]  # on_bad_image=skip
        if not samples:
            return None
        images = torch.stack([image for image, _ in samples])
        if mixer is not None and len(samples) > 1:
            targets = torch.tensor([label for _, label in samples])
            images, _ = mixer(images, targets, 0, 0)
    return images


def log_augmented_grid(
    loggers: Loggers,
    dataset: Dataset,
    count: int,
    mixer: Any | None,
    prep: Any,
) -> None:
    """Log `count` augmented training images as one grid at step 0 (count 0: nothing)."""
    if count == 0:
        return
    from torchvision.utils import make_grid

    images = augmented_batch(dataset, count, mixer)
    if images is None:
        return
    mean_t = torch.tensor(prep.mean).view(1, -1, 1, 1)
    std_t = torch.tensor(prep.std).view(1, -1, 1, 1)
    pixels = (images.float() * std_t + mean_t).clamp(0, 1)
    loggers.log_images(TAG, make_grid(pixels, nrow=8, padding=2, pad_value=1.0), 0)
