"""Images in class folders (torchvision's ImageFolder layout).

DIR/train with one sub-folder per class, plus DIR/val (or valid/, validation/) and DIR/test
where they exist: a split that has no folder is held out of DIR/train by data.val_fraction
and data.test_fraction. Or DIR/<class>/ alone, split by those fractions. Hidden folders and
files (`.ipynb_checkpoints`, `__MACOSX`, any name starting with a dot) are never classes nor
images.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from finetune.data.cache import pixels_of
from finetune.data.images import RGB, background_rgb, load_image
from finetune.data.splits import Splits, class_index, stratified_split
from finetune.safety.errors import DataFault, FinetuneError

log = logging.getLogger(__name__)

BAD_IMAGE_CHOICES = ("error", "skip")
# How many skipped files summary.json lists by name (the count is always whole).
LISTED_SKIPPED = 20
# Folder names that mean a split, not a class, next to DIR/train.
VAL_FOLDERS = ("val", "valid", "validation")
TEST_FOLDER = "test"
# Where the model's mean is not known yet: timm's (ImageNet's) default.
DEFAULT_MEAN = (0.485, 0.456, 0.406)
# What PIL raises for a file it cannot decode; DecompressionBombError is none of the others.
UNREADABLE = (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError)


class ImageFiles(Dataset):
    """(path, label) samples under `root`, decoded by `load_image`.

    An unreadable file (truncated, not an image, over PIL's decompression-bomb limit) stops the
    run naming it, or with `on_bad_image="skip"` (data.on_bad_image) is left out of its batch
    and counted: the marks live in shared memory, so what the loader workers skip is known to
    the main process.
    """

    def __init__(
        self, samples: list[tuple[str, int]], on_bad_image: str, background: Any, root: Path
    ) -> None:
        self.samples, self.root = samples, root
        self.transform: Any = None
        self.on_bad_image = on_bad_image
        self.background_choice = background
        self.background: RGB = background_rgb(background, DEFAULT_MEAN)
        self.skipped = torch.zeros(len(samples), dtype=torch.bool).share_memory_()
        # data.cache (data/cache.py): decoded views kept once made, and what makes one.
        self.decoded: Any = None
        self.view: Any = None
        self.batch_transform: Any = None  # the views' eval transform: a batch as each sample

    def with_samples(self, samples: list[tuple[str, int]]) -> ImageFiles:
        """Another split of the same folder: the same root and settings, other samples."""
        return ImageFiles(samples, self.on_bad_image, self.background_choice, self.root)

    def use_mean(self, mean: tuple[float, ...]) -> None:
        """The model's input mean, which `data.background=mean` fills transparency with."""
        self.background = background_rgb(self.background_choice, mean)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        path, label = self.samples[index]
        if self.decoded is not None:
            pixels = self.view_of(index)
            return None if pixels is None else (self.transform(pixels), label)
        image = self.read(index)
        return None if image is None else (self.transform(image), label)

    def view_of(self, index: int) -> torch.Tensor | None:
        """The cached view of a sample, decoded and kept first if need be (None: unreadable,
        data.on_bad_image=skip)."""
        pixels = self.decoded.get(index)
        if pixels is None:
            image = self.read(index)
            if image is None:
                return None  # collate_readable leaves it out of the batch
            pixels = self.decoded.put(index, pixels_of(self.view(image)))
        return pixels

    def in_one_piece(self, indices: list[int]) -> bool:
        """Whether these samples load as one tensor operation: cached views, under the eval
        transform or a training one whose batches are bitwise its samples (view_augment.py)."""
        if self.decoded is None:
            return False
        return self.transform is self.batch_transform or getattr(
            self.transform, "batches_as_samples", False
        )

    def load_batch(self, indices: list[int]) -> list[tuple[torch.Tensor, int] | None]:
        """Samples that are `in_one_piece`, bitwise as one by one: views not cached yet are
        decoded first (the first epoch), unreadable ones skipped as one by one skips them
        (None, drawing nothing). Per sample, the transform's dispatch cost more than a small
        model's forward pass (0.1 s an epoch of 1,437 32 px images)."""
        readable = [index for index in indices if self.view_of(index) is not None]
        inputs = iter(self.transform(self.decoded.pixels[readable]) if readable else ())
        kept = set(readable)  # a list's `in` would be quadratic in the batch size
        return [(next(inputs), self.samples[i][1]) if i in kept else None for i in indices]

    def read(self, index: int) -> Image.Image | None:
        """The decoded image, or None when it is unreadable and data.on_bad_image=skip."""
        path = self.samples[index][0]
        try:
            return load_image(path, self.background)
        except UNREADABLE as error:
            reason = describe_unreadable(error)
            if self.on_bad_image == "skip":
                if not self.skipped[index]:
                    log.warning(
                        "skipped unreadable image %s (data.on_bad_image=skip): %s", path, reason
                    )
                self.skipped[index] = True
                return None
            raise DataFault(
                f"unreadable image {path} (sample {index}): {reason}; remove or replace the "
                "file, or set data.on_bad_image=skip"
            ) from None


def describe_unreadable(error: BaseException) -> str:
    """Why PIL could not read a file, in a few words."""
    if isinstance(error, Image.DecompressionBombError):
        return (
            f"larger than PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels "
            "(PIL.Image.MAX_IMAGE_PIXELS); downscale it"
        )
    return " ".join(str(error).split()) or type(error).__name__


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
    """The split folders under data.root where DIR/train exists, else one folder split here."""
    root = checked_root(cfg)
    folders = split_folders(root)
    if folders is None:
        samples, class_names = scan_class_folders(root, cfg.classes)
        return held_out_splits(samples, class_names, cfg, seed, root, "test")
    if cfg.folds is not None:
        raise FinetuneError(
            f"data.folds={cfg.folds} needs one folder to split into folds (DIR/<class>/), "
            f"but data.root={cfg.root} has split folders (train/ ...) already"
        )
    train, class_names = scan_class_folders(folders["train"], cfg.classes)
    test_folder = folders["test"]
    if folders["val"] is None:
        if test_folder is None:
            log.info("%s has only train/: val and test are held out of it by fraction", root)
            return held_out_splits(train, class_names, cfg, seed, root, "test")
        test = scan_class_folders(test_folder, class_names)[0]
        no_test = OmegaConf.merge(cfg, {"test_fraction": 0.0})
        splits = held_out_splits(train, class_names, no_test, seed, root, "test")
        splits.test = image_files(test, cfg, root)
        log.info("%s has no val/ folder: val is data.val_fraction of train/", root)
        return splits
    val = scan_class_folders(folders["val"], class_names)[0]
    test = scan_class_folders(test_folder, class_names)[0] if test_folder else val
    return Splits(
        image_files(train, cfg, root),
        image_files(val, cfg, root),
        image_files(test, cfg, root),
        class_names,
        "pil",
        "test" if test_folder else f"{folders['val'].name} (there is no DIR/test)",
    )


def checked_root(cfg: DictConfig) -> Path:
    """data.root, checked to be a directory, and data.on_bad_image to be a known choice."""
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
    background_rgb(cfg.background, DEFAULT_MEAN)  # a bad value fails now, not in a worker
    return root


def split_folders(root: Path) -> dict[str, Path | None] | None:
    """{"train", "val", "test"} folders when `root` has a train/ folder; None for class folders.

    The validation folder may be called val, valid or validation (one of them).
    """
    if not (root / "train").is_dir():
        return None
    vals = [root / name for name in VAL_FOLDERS if (root / name).is_dir()]
    if len(vals) > 1:
        raise FinetuneError(
            f"data.root={root} has {' and '.join(v.name + '/' for v in vals)}: keep one "
            "validation folder (rename or move the others)"
        )
    test = root / TEST_FOLDER
    return {
        "train": root / "train",
        "val": vals[0] if vals else None,
        "test": test if test.is_dir() else None,
    }


def held_out_splits(
    samples: list[tuple[str, int]],
    class_names: list[str],
    cfg: DictConfig,
    seed: int,
    root: Path,
    test_source: str,
) -> Splits:
    """Train, val and test held out of one list of samples, stratified and seeded."""
    labels = np.array([label for _, label in samples])
    train_idx, val_idx, test_idx = stratified_split(labels, cfg, seed)

    def pick(idx: np.ndarray) -> ImageFiles:
        return image_files([samples[i] for i in idx], cfg, root)

    return Splits(pick(train_idx), pick(val_idx), pick(test_idx), class_names, "pil", test_source)


def image_files(samples: list[tuple[str, int]], cfg: DictConfig, root: Path) -> ImageFiles:
    return ImageFiles(samples, cfg.on_bad_image, cfg.background, root)


def is_hidden(name: str) -> bool:
    """A name a user never meant as data: dot-files and folders, macOS's __MACOSX."""
    return name.startswith(".") or name == "__MACOSX"


def scan_class_folders(root: Path, wanted: Any) -> tuple[list[tuple[str, int]], list[str]]:
    """Samples of `root/<class>/*` labelled in the order of `wanted` (default: sorted names)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    all_classes = sorted(
        entry.name for entry in root.iterdir() if entry.is_dir() and not is_hidden(entry.name)
    )
    if not all_classes:
        raise FinetuneError(f"{root} has no class sub-folders; put images in {root}/<class>/")
    names = (
        all_classes
        if wanted is None
        else [all_classes[class_index(c, all_classes)] for c in wanted]
    )

    def is_image(path: str) -> bool:
        """An image file with no hidden folder or file on its way from `root`."""
        parts = Path(path).relative_to(root).parts
        return path.lower().endswith(IMG_EXTENSIONS) and not any(map(is_hidden, parts))

    samples = make_dataset(
        str(root),
        {name: i for i, name in enumerate(names)},
        is_valid_file=is_image,
        allow_empty=True,
    )
    found = {label for _, label in samples}
    for label, name in enumerate(names):
        if label not in found:
            raise FinetuneError(
                f"class folder {root / name} has no images ({' '.join(IMG_EXTENSIONS)}); "
                "add images or remove the folder"
            )
    return samples, names
