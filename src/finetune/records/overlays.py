"""Segmentation pictures: image | true | predicted mask rows, and the pixel confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from finetune.records.predictions import Predictions
    from finetune.tasks.segmentation import Segmentation

# How much of an overlay pixel is the class colour (the rest is the image beneath).
ALPHA = 0.6


def palette(num_classes: int) -> torch.Tensor:
    """(num_classes + 1, 3) colours in [0, 1]: matplotlib's tab20, then black for ignored pixels.

    Class 0 (background, by convention) is drawn transparent by `overlay`.
    """
    from matplotlib import colormaps

    colours = colormaps["tab20"].resampled(max(num_classes, 2))(range(num_classes))
    table = torch.tensor(colours[:, :3], dtype=torch.float32)
    return torch.cat([table, torch.zeros(1, 3)])


def overlay(
    image: torch.Tensor, mask: torch.Tensor, colours: torch.Tensor, ignore: int
) -> torch.Tensor:
    """`image` (3, H, W) with each non-background pixel tinted by its class colour."""
    index = torch.where(mask == ignore, len(colours) - 1, mask).clamp(max=len(colours) - 1)
    tint = colours[index].permute(2, 0, 1)
    painted = (mask != 0).unsqueeze(0)
    return torch.where(painted, (1 - ALPHA) * image + ALPHA * tint, image)


def overlay_grid(predictions: Predictions, count: int, ignore: int) -> torch.Tensor:
    """One row per image (the same validation images every epoch): image | true | predicted."""
    from torchvision.utils import make_grid

    images = predictions.images[:count]
    colours = palette(len(predictions.class_names))
    tiles = []
    for image, truth, pred in zip(images, predictions.targets, predictions.preds, strict=False):
        tiles += [
            image,
            overlay(image, truth, colours, ignore),
            overlay(image, pred, colours, ignore),
        ]
    return make_grid(torch.stack(tiles), nrow=3, padding=2, pad_value=1.0)


@dataclass
class PixelPass:
    """A validation pass seen pixel by pixel (labelled pixels only), for the confusion figure."""

    class_names: list[str]
    targets: torch.Tensor
    preds: torch.Tensor

    def __len__(self) -> int:
        return int(self.targets.numel())


def pixel_confusion_image(predictions: Predictions, epoch: int, task: Segmentation) -> torch.Tensor:
    """Rows true classes, columns predicted, over every labelled pixel of the pass."""
    from finetune.records.visuals import confusion_image

    labelled = predictions.targets != task.ignore_index
    pixels = PixelPass(
        predictions.class_names, predictions.targets[labelled], predictions.preds[labelled]
    )
    return confusion_image(pixels, epoch, unit="pixels")
