"""Pictures of a validation pass: a labelled image grid and the confusion matrix.

Both are plain tensors, so every backend can show them (TensorBoard's add_image, wandb.Image);
both are drawn with PIL, in milliseconds, since they are drawn every epoch. `figure_to_image`
turns a matplotlib figure (drawn without pyplot: no global state, no display) into the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from finetune.records.predictions import Predictions

# Grid tiles: image side and caption height in pixels, and tiles per row.
TILE = 96
CAPTION = 28
PER_ROW = 8
RIGHT, WRONG = (60, 200, 90), (235, 70, 70)


def labelled_grid(
    predictions: Predictions, count: int, label_text: Callable[[torch.Tensor], str]
) -> torch.Tensor:
    """The first `count` validation images, each captioned with its true and predicted labels.

    The caption and the tile's border are green when the prediction is right, red when wrong.
    Returns a float (3, H, W) tensor in [0, 1] (torchvision's make_grid of the tiles).
    """
    from torchvision.utils import make_grid

    tiles = [
        caption_tile(image, label_text(predictions.targets[i]), label_text(predictions.preds[i]))
        for i, image in enumerate(predictions.images[:count])
    ]
    if not tiles:
        return torch.zeros(3, TILE + CAPTION, TILE)
    # Tiles are built in numpy and stacked once: a few large tensor ops, not hundreds of small.
    stacked = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
    return make_grid(stacked, nrow=PER_ROW, padding=2, pad_value=255).float() / 255


def caption_tile(image: torch.Tensor, true: str, pred: str) -> np.ndarray:
    """One image resized to TILE pixels, with 'true X' and 'pred Y' written under it (HWC)."""
    from PIL import Image, ImageDraw

    pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    upscale = image.shape[-1] < TILE
    picture = Image.fromarray(pixels).resize(
        (TILE, TILE), Image.Resampling.NEAREST if upscale else Image.Resampling.BILINEAR
    )
    canvas = Image.new("RGB", (TILE, TILE + CAPTION), (30, 30, 30))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    color = RIGHT if true == pred else WRONG
    draw.text((3, TILE + 2), f"true {true[:12]}", fill=(235, 235, 235), font=caption_font())
    draw.text((3, TILE + 15), f"pred {pred[:12]}", fill=color, font=caption_font())
    draw.rectangle((0, 0, TILE - 1, TILE + CAPTION - 1), outline=color, width=2)
    return np.asarray(canvas)


@functools.cache
def caption_font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=11)


def confusion_counts(targets: torch.Tensor, preds: torch.Tensor, n: int) -> np.ndarray:
    """counts[true, predicted] over a pass."""
    return torch.bincount(targets * n + preds, minlength=n * n).view(n, n).numpy()


def confusion_image(predictions: Predictions, epoch: int, unit: str = "images") -> torch.Tensor:
    """The pass's confusion matrix, titled with its epoch, size and accuracy."""
    from finetune.records.confusion_picture import confusion_picture

    n = len(predictions.class_names)
    counts = confusion_counts(predictions.targets, predictions.preds, n)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    title = f"validation, epoch {epoch}: {len(predictions)} {unit}, accuracy {accuracy:.3f}"
    return confusion_picture(counts, predictions.class_names, title)


def figure_to_image(figure: Figure) -> torch.Tensor:
    """Draw a figure with the Agg canvas and return its pixels, float (3, H, W) in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255
