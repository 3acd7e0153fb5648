"""Decoding an image file into the 8-bit RGB picture a person would see in a viewer.

One function, `load_image`, for every reader of image files (the class-folder data set, the
decoded-image cache, prediction), so that training and inference see the same pixels:

- EXIF orientation is applied (a phone photo taken upright is upright, not on its side);
- 16-bit greyscale (PNG, TIFF) is scaled to 8 bits, not clipped (PIL's own conversion clips
  every value above 255 to white);
- transparency (RGBA, LA, palette with a transparent colour) is composited on a background
  colour (`data.background`: white, black, the model's mean, or [R, G, B]) instead of keeping
  whatever colour happens to lie under the transparent pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from finetune.safety.errors import FinetuneError

RGB = tuple[int, int, int]
NAMED_BACKGROUNDS: dict[str, RGB] = {"white": (255, 255, 255), "black": (0, 0, 0)}
# Modes holding more than 8 bits per pixel of greyscale; PIL's convert("RGB") clips them.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def load_image(path: str | Path, background: RGB) -> Image.Image:
    """The file at `path` as an upright 8-bit RGB image, transparency on `background`.

    Raises what PIL raises for a file it cannot read (OSError, UnidentifiedImageError,
    DecompressionBombError, ...); the caller decides whether to skip it.
    """
    with Image.open(path) as image:
        return to_rgb(image, background)


def to_rgb(image: Image.Image, background: RGB) -> Image.Image:
    """An opened image as upright 8-bit RGB (see the module's docstring)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in WIDE_GREY_MODES:
        image = scaled_to_8_bits(image)
    if has_transparency(image):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def scaled_to_8_bits(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale image scaled to 0..255 (65535 -> 255), as an 8-bit "L" image.

    Mode "I" (32-bit integers) is how older PIL versions open 16-bit PNGs: its values are
    taken as 16-bit too.
    """
    pixels = np.asarray(image, dtype=np.float64)
    scaled = np.clip(np.rint(pixels / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def has_transparency(image: Image.Image) -> bool:
    """Whether any pixel may be (partly) transparent: an alpha band or a transparent colour."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def background_rgb(choice: Any, mean: Sequence[float]) -> RGB:
    """`data.background` as an RGB colour: white, black, mean (the model's input mean), [R,G,B].

    "mean" makes transparent pixels 0 after normalisation: they carry no signal at all.
    """
    if isinstance(choice, str) and choice in NAMED_BACKGROUNDS:
        return NAMED_BACKGROUNDS[choice]
    if choice == "mean":
        return tuple(round(255 * channel) for channel in mean[:3])  # type: ignore[return-value]
    values = list(choice) if isinstance(choice, Sequence) and not isinstance(choice, str) else []
    if len(values) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in values):
        return tuple(values)  # type: ignore[return-value]
    raise FinetuneError(
        f"data.background={choice} must be white, black, mean or [R, G, B] with values 0-255"
    )


def background_of(data_cfg: Any, mean: Sequence[float]) -> RGB:
    """A run's data.background; white where its data set has no such key (digits, CIFAR-10:
    opaque images) or its checkpoint predates it (white was the first default)."""
    if "background" not in data_cfg:
        return NAMED_BACKGROUNDS["white"]
    return background_rgb(data_cfg.background, mean)
