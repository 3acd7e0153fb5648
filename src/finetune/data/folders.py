"""Images in class folders (torchvision's ImageFolder layout).

DIR/train, DIR/val and optional DIR/test with one sub-folder per class; or DIR/<class>/ alone,
split by data.val_fraction and data.test_fraction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from finetune.data.splits import Splits, class_index, stratified_split
from finetune.errors import FinetuneError


class ImageFiles(Dataset):
    """(path, label) samples read with PIL; an unreadable file is named in the error."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples
        self.transform: Any = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, UnidentifiedImageError, SyntaxError) as error:
            raise FinetuneError(
                f"unreadable image {path} (sample {index}): {error}; remove or replace the file"
            ) from None
        return self.transform(image), label


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
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, class_names = scan_class_folders(root / "train", cfg.classes)
        val, _ = scan_class_folders(root / "val", class_names)
        has_test = (root / "test").is_dir()
        test = scan_class_folders(root / "test", class_names)[0] if has_test else val
        return Splits(
            ImageFiles(train),
            ImageFiles(val),
            ImageFiles(test),
            class_names,
            "pil",
            "test" if has_test else "val (there is no DIR/test)",
        )
    samples, class_names = scan_class_folders(root, cfg.classes)
    labels = np.array([label for _, label in samples])
    train_idx, val_idx, test_idx = stratified_split(labels, cfg, seed)

    def pick(idx: np.ndarray) -> ImageFiles:
        return ImageFiles([samples[i] for i in idx])

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
