"""Images and masks in folders: `data=mask_folder data.root=DIR`.

DIR/images/<stem>.<ext> with DIR/masks/<stem>.png, or DIR/train, DIR/val[, DIR/test] each laid
out so (ready-made splits; a missing val/test is held out of train by fraction). Masks are index
PNGs (pixel value = class index, `data.ignore_index` for unlabelled pixels) or RGB PNGs with
`data.palette` (one [R, G, B] per class, in `data.class_names` order). Held-out splits are
stratified by the rarest class each mask shows.

Every mask is read once here, so that bad input stops the run before training, naming the file:
a mask without an image or the reverse, a mask whose size differs from its image's, a value that
is no class and not ignore_index, a colour missing from the palette.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from finetune.data.masks import MaskedImages, image_tensor, presence
from finetune.data.splits import Splits, stratified_split
from finetune.safety.errors import FinetuneError

SPLITS = ("train", "val", "test")


class BadMask(FinetuneError):
    """A mask or image that does not fit the data config (the message names the file)."""


def mask_folder_splits(cfg: DictConfig, seed: int) -> Splits:
    if cfg.root is None or not Path(cfg.root).is_dir():
        raise FinetuneError(
            f"data=mask_folder needs data.root=DIR with DIR/images and DIR/masks (or DIR/train, "
            f"DIR/val with them); data.root={cfg.root} is not a folder"
        )
    if cfg.classes is not None or cfg.folds is not None:
        raise FinetuneError("data.classes and data.folds are not supported by data=mask_folder")
    if not cfg.class_names or len(cfg.class_names) < 2:
        raise FinetuneError(
            f"data=mask_folder needs data.class_names=[background,...] (at least 2, in mask "
            f"index order); it is {cfg.class_names}"
        )
    root, names = Path(cfg.root), list(cfg.class_names)
    if not (root / "train").is_dir():
        return held_out(read_pairs(root, cfg), names, cfg, seed, root)
    parts = {s: read_pairs(root / s, cfg) for s in SPLITS if (root / s).is_dir()}
    if "val" not in parts:
        return held_out(parts["train"], names, cfg, seed, root)
    test = parts.get("test", parts["val"])
    pick = [files_set(p, root, len(names)) for p in (parts["train"], parts["val"], test)]
    return Splits(*pick, names, "mask", test_source="test" if "test" in parts else "val")


def read_pairs(folder: Path, cfg: DictConfig) -> list[tuple[Path, Path, torch.Tensor]]:
    """(image, mask, mask as class indices) for each stem in folder/images and folder/masks."""
    images = stems(folder / "images")
    masks = stems(folder / "masks")
    for only, other, kind in ((masks, images, "mask"), (images, masks, "image")):
        lonely = sorted(set(only) - set(other))
        if lonely:
            missing = "image" if kind == "mask" else "mask"
            raise BadMask(
                f"{only[lonely[0]]}: a {kind} without its {missing} ({len(lonely)} such); add "
                f"the {missing} of the same stem or remove the {kind}"
            )
    return [(images[s], masks[s], read_mask(images[s], masks[s], cfg)) for s in sorted(masks)]


def stems(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FinetuneError(f"{folder} is missing: data=mask_folder needs images/ and masks/")
    return {
        p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
    }


def read_mask(image_path: Path, mask_path: Path, cfg: DictConfig) -> torch.Tensor:
    """The mask as (H, W) class indices, checked against its image and the classes."""
    with Image.open(image_path) as image:
        image_size = image.size
    with Image.open(mask_path) as mask:
        if mask.size != image_size:
            raise BadMask(
                f"{mask_path} is {mask.size[0]}x{mask.size[1]} but its image {image_path.name} is "
                f"{image_size[0]}x{image_size[1]}; masks must have their image's size"
            )
        pixels = np.asarray(mask.convert("RGB") if cfg.palette is not None else mask)
    if cfg.palette is not None:
        return from_palette(pixels, mask_path, cfg)
    if pixels.ndim != 2:
        raise BadMask(
            f"{mask_path} has colour channels; give index masks, or data.palette=[[R,G,B], ...] "
            "with one colour per class"
        )
    indices = torch.from_numpy(pixels.astype(np.int64))
    bad = indices[(indices >= len(cfg.class_names)) & (indices != cfg.ignore_index)]
    if bad.numel():
        last = len(cfg.class_names) - 1
        raise BadMask(
            f"{mask_path} has value {int(bad[0])}, which is no class (0..{last}) "
            f"and not data.ignore_index={cfg.ignore_index}; fix the mask or data.class_names"
        )
    return indices.to(torch.uint8) if cfg.ignore_index < 256 else indices


def from_palette(pixels: np.ndarray, mask_path: Path, cfg: DictConfig) -> torch.Tensor:
    """RGB colours to class indices by `data.palette`; a colour not in it is an error."""
    palette = [tuple(int(v) for v in colour) for colour in cfg.palette]
    if len(palette) != len(cfg.class_names):
        raise FinetuneError(
            f"data.palette has {len(palette)} colours for {len(cfg.class_names)} classes; give one "
            "[R, G, B] per class of data.class_names"
        )
    rgb = pixels.astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    indices = np.full(codes.shape, cfg.ignore_index, dtype=np.int64)
    for index, (r, g, b) in enumerate(palette):
        indices[codes == (r << 16 | g << 8 | b)] = index
    unknown = codes[indices == cfg.ignore_index]
    if unknown.size:
        code = int(unknown[0])
        colour = [code >> 16, (code >> 8) & 255, code & 255]
        raise BadMask(
            f"{mask_path} has colour {colour}, which data.palette lacks; add it to the palette "
            "(with its class in data.class_names) or recolour the mask"
        )
    return torch.from_numpy(indices)


class PairLoader:
    """Reads sample `index` of `pairs`: the image as float RGB in [0, 1], its checked mask."""

    def __init__(self, pairs: list[tuple[Path, Path, torch.Tensor]]) -> None:
        self.pairs = pairs

    def __call__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, _, mask = self.pairs[index]
        with Image.open(image_path) as image:
            return image_tensor(image).as_subclass(torch.Tensor), mask


def files_set(pairs: list, root: Path, num_classes: int) -> MaskedImages:
    labels = presence([mask for _, _, mask in pairs], num_classes)
    samples = [(str(image), row) for (image, _, _), row in zip(pairs, labels, strict=True)]
    return MaskedImages(PairLoader(pairs), labels, root, samples)


def held_out(pairs: list, names: list[str], cfg: DictConfig, seed: int, root: Path) -> Splits:
    """Val and test held out by fraction, stratified by each mask's rarest class."""
    labels = presence([mask for _, _, mask in pairs], len(names))
    frequency = labels.sum(0)
    rarest = [int(torch.where(row > 0, frequency, np.inf).argmin()) for row in labels]
    try:
        parts = stratified_split(np.array(rarest), cfg, seed)
    except ValueError:  # a class too rare to stratify by: split at random instead
        parts = stratified_split(np.zeros(len(pairs), dtype=int), cfg, seed)
    pick = [files_set([pairs[i] for i in idx], root, len(names)) for idx in parts]
    return Splits(*pick, names, "mask")
