"""Captioned image tiles on one sheet: predict's contact sheet and the report's top losses.

Plain PIL, so a sheet of a hundred images costs milliseconds and needs no figure machinery.
A tile's border says how the prediction went: green right, red wrong, grey when no truth is
known.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

# Image side and caption line height in pixels, tiles per row, border width.
SIDE = 128
LINE = 14
PER_ROW = 8
BORDER = 3
RIGHT, WRONG, UNKNOWN = (60, 200, 90), (235, 70, 70), (150, 150, 150)
BACKGROUND, TEXT = (30, 30, 30), (235, 235, 235)


@dataclass
class Tile:
    image: Image.Image
    lines: list[str]  # captions under the image, the first one coloured like the border
    correct: bool | None  # None: no truth to judge by


def tile_color(correct: bool | None) -> tuple[int, int, int]:
    return UNKNOWN if correct is None else RIGHT if correct else WRONG


def draw_sheet(tiles: list[Tile], per_row: int = PER_ROW) -> Image.Image:
    """The tiles in rows of `per_row`, each SIDE wide, captions under the images."""
    lines = max((len(tile.lines) for tile in tiles), default=1)
    height = SIDE + lines * LINE + 6
    columns = max(1, min(per_row, len(tiles)))
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (columns * (SIDE + 4), rows * (height + 4)), (255, 255, 255))
    for index, tile in enumerate(tiles):
        x, y = (index % columns) * (SIDE + 4) + 2, (index // columns) * (height + 4) + 2
        sheet.paste(draw_tile(tile, height), (x, y))
    return sheet


def draw_tile(tile: Tile, height: int) -> Image.Image:
    canvas = Image.new("RGB", (SIDE, height), BACKGROUND)
    image = tile.image.convert("RGB")
    if max(image.size) < SIDE:  # small images (digits) are enlarged with crisp pixels
        scale = SIDE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.NEAREST)
    else:
        image.thumbnail((SIDE, SIDE))
    canvas.paste(image, ((SIDE - image.width) // 2, (SIDE - image.height) // 2))
    draw = ImageDraw.Draw(canvas)
    color = tile_color(tile.correct)
    for number, line in enumerate(tile.lines):
        fill = color if number == 0 and tile.correct is not None else TEXT
        draw.text((4, SIDE + 3 + number * LINE), line[:22], fill=fill, font=font())
    draw.rectangle((0, 0, SIDE - 1, height - 1), outline=color, width=BORDER)
    return canvas


@functools.cache
def font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=11)


def save_png(image: Image.Image, path: Path) -> Path:
    """Written to a temporary name and renamed: a reader never sees half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path
