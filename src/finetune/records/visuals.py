"""Pictures of a validation pass: a labelled image grid and a confusion-matrix figure.

Both are plain tensors or matplotlib figures, so every backend can show them (TensorBoard's
add_image, wandb.Image). matplotlib is used without pyplot: no global figure state, no
display needed, nothing left open between epochs.
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


def confusion_figure(predictions: Predictions, epoch: int) -> Figure:
    """Rows are true classes, columns predicted; colour is the row's fraction, text the count."""
    from matplotlib.figure import Figure

    n = len(predictions.class_names)
    counts = confusion_counts(predictions.targets, predictions.preds, n)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * n + 2.0), 24.0)
    figure = Figure(figsize=(side + 1.0, side), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    shown = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=ax, fraction=0.046, label="fraction of the true class")
    if n <= 50:
        ticks = range(n)
        names = [name[:14] for name in predictions.class_names]
        ax.set_xticks(ticks, names, rotation=90 if n > 10 else 0)
        ax.set_yticks(ticks, names)
    if n <= 20:
        for row in range(n):
            for col in range(n):
                dark = fractions[row, col] > 0.5
                ax.text(col, row, str(counts[row, col]), ha="center", va="center",
                        fontsize=8, color="white" if dark else "black")  # fmt: skip
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(f"validation, epoch {epoch}: {len(predictions)} images, accuracy {accuracy:.3f}")
    return figure


def confusion_counts(targets: torch.Tensor, preds: torch.Tensor, n: int) -> np.ndarray:
    """counts[true, predicted] over a pass."""
    return torch.bincount(targets * n + preds, minlength=n * n).view(n, n).numpy()


def confusion_image(predictions: Predictions, epoch: int) -> torch.Tensor:
    return figure_to_image(confusion_figure(predictions, epoch))


def figure_to_image(figure: Figure) -> torch.Tensor:
    """Draw a figure with the Agg canvas and return its pixels, float (3, H, W) in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1).float() / 255
