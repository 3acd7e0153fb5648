"""What predict.py leaves for a segmentation run, besides predictions.csv.

    masks/<input>.png      the predicted class of each pixel: a palette PNG of class indices,
                           the size of the input image (the model's output resized, nearest)
    overlays/<input>.png   the input with its predicted mask blended in (records/overlays.py's
                           colours, background left clear)
    contact_sheet.png      the first `predict.sheet_images` overlays, with the classes found

A mask PNG opens as class indices (`np.asarray(Image.open(path))`) and shows in colour in any
viewer. Everything is a function of the input and the model: the same input gives the same
files byte for byte. A later predict into the same folder removes the masks and overlays of
the earlier one's inputs that it does not predict again (those named in the earlier
predictions.csv, nothing else), so masks/ always matches predictions.csv.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from finetune.records.gallery import Tile, draw_sheet, save_png
from finetune.records.overlays import overlay, palette
from finetune.safety.errors import FinetuneError

if TYPE_CHECKING:
    from collections.abc import Callable


def output_name(name: str) -> Path:
    """An input's name in predictions.csv as a relative .png path (no root, no '..').

    Inputs that differ only in their suffix (x.jpg, x.png) share one: the later one stays.
    """
    parts = [part for part in PurePosixPath(name).parts if part not in ("/", ".", "..")]
    return Path(*parts).with_suffix(".png")


def read_upright(file: Path) -> Image.Image:
    """The input as predict saw it: upright by EXIF, RGB (transparency on white)."""
    from finetune.data.images import NAMED_BACKGROUNDS, to_rgb

    with Image.open(file) as image:
        return to_rgb(image, NAMED_BACKGROUNDS["white"])


def mask_image(mask: torch.Tensor, size: tuple[int, int], colours: torch.Tensor) -> Image.Image:
    """(h, w) class indices as a palette PNG image of `size` (width, height)."""
    picture = Image.fromarray(mask.to(torch.uint8).numpy(), mode="P")
    table = (colours[:-1] * 255).round().to(torch.uint8).flatten().tolist()
    picture.putpalette(table + [0] * (768 - len(table)))
    return picture.resize(size, Image.Resampling.NEAREST)


def blended(
    image: Image.Image, classes: torch.Tensor, colours: torch.Tensor, ignore: int
) -> Image.Image:
    """`image` with the classes of its (H, W) mask tinted as in the run's overlays."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    tinted = overlay(pixels, classes.long(), colours, ignore)
    return Image.fromarray((tinted * 255).round().byte().permute(1, 2, 0).numpy())


def write_mask_files(
    out: Path,
    files: list[Path],
    names: list[str],
    masks: torch.Tensor,
    num_classes: int,
    describe: Callable[[torch.Tensor], str],
    sheet_images: int,
) -> dict[str, Path]:
    """Each input's mask and overlay, and the contact sheet of the first `sheet_images`.

    `masks` are the model-sized (N, h, w) predictions; `describe` puts one in words.
    """
    if num_classes > 256:
        raise FinetuneError(
            f"mask PNGs hold at most 256 classes and the model has {num_classes}; predict "
            "without out= (finetune.predict) for the rows alone"
        )
    colours = palette(num_classes)
    tiles = []
    for index, (file, name, mask) in enumerate(zip(files, names, masks, strict=True)):
        image = read_upright(file)
        resized = mask_image(mask, image.size, colours)
        classes = torch.from_numpy(np.asarray(resized, dtype=np.int64))
        tinted = blended(image, classes, colours, ignore=num_classes)
        save_png(resized, out / "masks" / output_name(name))
        save_png(tinted, out / "overlays" / output_name(name))
        if index < sheet_images:
            tiles.append(Tile(tinted, [describe(mask), PurePosixPath(name).name], None))
    written = {"masks": out / "masks", "overlays": out / "overlays"}
    if tiles:
        written["sheet"] = save_png(draw_sheet(tiles), out / "contact_sheet.png")
    return written


def earlier_inputs(out: Path) -> set[str]:
    """The inputs of an earlier predict into `out`: its predictions.csv's `file` column."""
    table = out / "predictions.csv"
    if not table.is_file():
        return set()
    with table.open(newline="") as handle:
        names = {row["file"] for row in csv.DictReader(handle) if row.get("file")}
    # The table is data: a name with no file part ("..", "/") names no mask of ours.
    return {name for name in names if set(PurePosixPath(name).parts) - {"/", ".", ".."}}


def remove_stale_masks(out: Path, earlier: set[str], current: list[str]) -> int:
    """Remove the masks and overlays an earlier predict wrote for inputs not predicted now.

    Only files named after the earlier predictions.csv (output_name: inside masks/ and
    overlays/, no '..') are touched: a folder's other files are never predict's to delete.
    """
    kept = {output_name(name) for name in current}
    removed = 0
    for stale in {output_name(name) for name in earlier} - kept:
        for folder in ("masks", "overlays"):
            path = out / folder / stale
            if path.is_file():
                path.unlink()
                removed += folder == "masks"
    return removed
