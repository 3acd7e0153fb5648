"""Images in class folders (torchvision's ImageFolder layout).

DIR/train, DIR/val and optional DIR/test with one sub-folder per class; or DIR/<class>/ alone,
split by data.val_fraction and data.test_fraction.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from finetune.data.cache import pixels_of
from finetune.data.splits import Splits, class_index, stratified_split
from finetune.safety.errors import DataFault, FinetuneError

log = logging.getLogger(__name__)

BAD_IMAGE_CHOICES = ("error", "skip")
# How many skipped files summary.json lists by name (the count is always whole).
LISTED_SKIPPED = 20


class ImageFiles(Dataset):
    """(path, label) samples read with PIL.

    An unreadable file (truncated, not an image) stops the run naming it, or with
    `on_bad_image="skip"` (data.on_bad_image) is left out of its batch and counted: the
    marks live in shared memory, so what the loader workers skip is known to the main process.
    """

    def __init__(self, samples: list[tuple[str, int]], on_bad_image: str) -> None:
        self.samples = samples
        self.transform: Any = None
        self.on_bad_image = on_bad_image
        self.skipped = torch.zeros(len(samples), dtype=torch.bool).share_memory_()
        # data.cache (data/cache.py): decoded views kept once made, and what makes one.
        self.decoded: Any = None
        self.view: Any = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.samples[index]
        if self.decoded is not None:
            pixels = self.decoded.get(index)
            if pixels is None:
                image = self.read(index)
                if image is None:
                    return None  # collate_readable leaves it out of the batch
                pixels = self.decoded.put(index, pixels_of(self.view(image)))
            return self.transform(pixels), label
        image = self.read(index)
        return None if image is None else (self.transform(image), label)

    def read(self, index: int) -> Image.Image | None:
        """The decoded image, or None when it is unreadable and data.on_bad_image=skip."""
        path = self.samples[index][0]
        try:
            return decode_image(path)
        except (OSError, UnidentifiedImageError, SyntaxError) as error:
            if self.on_bad_image == "skip":
                if not self.skipped[index]:
                    log.warning(
                        "skipped unreadable image %s (data.on_bad_image=skip): %s", path, error
                    )
                self.skipped[index] = True
                return None
            raise DataFault(
                f"unreadable image {path} (sample {index}): {error}; remove or replace the file, "
                "or set data.on_bad_image=skip"
            ) from None


def decode_image(path: str) -> Image.Image:
    """The one place a file becomes an RGB image (the decoded-image cache calls it too)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def collate_readable(batch: list[Any]) -> Any:
    """default_collate without the samples skipped as unreadable (None)."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        raise DataFault(
            f"all {len(batch)} images of a batch are unreadable (data.on_bad_image=skip); "
            "check the files the warnings above name"
        )
    return default_collate(kept)


def skipped_images(splits: Splits) -> dict[str, Any]:
    """{"skipped_images": {"count": n, "files": [...]}} under data.on_bad_image=skip, else {}."""
    datasets = [d for d in (splits.train, splits.val, splits.test) if isinstance(d, ImageFiles)]
    if not any(d.on_bad_image == "skip" for d in datasets):
        return {}
    files = sorted(
        {d.samples[i][0] for d in datasets for i in d.skipped.nonzero().flatten().tolist()}
    )
    return {"skipped_images": {"count": len(files), "files": files[:LISTED_SKIPPED]}}


def image_folder_splits(cfg: DictConfig, seed: int) -> Splits:
    """Ready-made split folders when DIR/train and DIR/val exist, else one folder split here."""
    if not cfg.root:
        raise FinetuneError(
            "data=image_folder needs data.root=DIR (DIR/train, DIR/val[, DIR/test] with class "
            "sub-folders, or DIR/<class>/ alone)"
        )
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise FinetuneError(f"data.root={cfg.root} does not exist or is not a directory")
    if cfg.on_bad_image not in BAD_IMAGE_CHOICES:
        raise FinetuneError(
            f"data.on_bad_image={cfg.on_bad_image} must be one of {', '.join(BAD_IMAGE_CHOICES)}"
        )
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, class_names = scan_class_folders(root / "train", cfg.classes)
        val, _ = scan_class_folders(root / "val", class_names)
        has_test = (root / "test").is_dir()
        test = scan_class_folders(root / "test", class_names)[0] if has_test else val
        return Splits(
            ImageFiles(train, cfg.on_bad_image),
            ImageFiles(val, cfg.on_bad_image),
            ImageFiles(test, cfg.on_bad_image),
            class_names,
            "pil",
            "test" if has_test else "val (there is no DIR/test)",
        )
    samples, class_names = scan_class_folders(root, cfg.classes)
    labels = np.array([label for _, label in samples])
    train_idx, val_idx, test_idx = stratified_split(labels, cfg, seed)

    def pick(idx: np.ndarray) -> ImageFiles:
        return ImageFiles([samples[i] for i in idx], cfg.on_bad_image)

    return Splits(pick(train_idx), pick(val_idx), pick(test_idx), class_names, "pil")


def scan_class_folders(root: Path, wanted: Any) -> tuple[list[tuple[str, int]], list[str]]:
    """Samples of `root/<class>/*` labelled in the order of `wanted` (default: sorted names)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    all_classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not all_classes:
        raise FinetuneError(f"{root} has no class sub-folders; put images in {root}/<class>/")
    names = (
        all_classes
        if wanted is None
        else [all_classes[class_index(c, all_classes)] for c in wanted]
    )
    for name in names:
        if not any(p.suffix.lower() in IMG_EXTENSIONS for p in (root / name).rglob("*")):
            raise FinetuneError(
                f"class folder {root / name} has no images ({' '.join(IMG_EXTENSIONS)}); "
                "add images or remove the folder"
            )
    samples = make_dataset(
        str(root), {name: i for i, name in enumerate(names)}, extensions=IMG_EXTENSIONS
    )
    return samples, names
