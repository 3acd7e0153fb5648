"""A decoded-image cache for image folders: decode and resize each file once, then read pixels.

Decoding a PNG or JPEG and resizing it costs more than a small model's step on it, every epoch.
With `data.cache` on, the first time a sample is loaded its deterministic view (the eval
transform's resize and centre crop, as uint8 RGB) is kept; later epochs, and the validation and
test passes, read those bytes and only the random augmentation and normalisation run, on
tensors. The eval tensors are bitwise those of decoding (timm's own resize, crop and normalise;
uint8 / 255 is what ToTensor computes).

- `memory`: a shared-memory tensor of this process, filled by whichever process (the main one or
  a loader worker) loads a sample first; gone when the run ends.
- `disk`: the same as a memory-mapped file under `data.cache_dir`, named by a hash of the files
  (paths, sizes, modification times) and the decode settings, so a changed file or other
  settings make a new cache, and later runs of a sweep read the pixels the first one decoded.
  The bytes are data only: a sample is read from it only when its `filled` flag is set, which
  is written after its pixels.
- `auto` (the default): `memory` when the decoded images of all splits fit
  `data.cache_memory_mb` and half the free shared memory (a container's small /dev/shm would
  otherwise end the run with a bus error when it fills), else none.
- `none`: decode every time, as without a cache.

Training augmentation on a cached view is the run's recipe (augment=...), given a PIL image of
the view: its crops are taken from the centre-cropped view rather than from the full original
file. Without augmentation, training reads the views as evaluation does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)

CACHE_CHOICES = ("auto", "none", "memory", "disk")
FORMAT = "decoded-v1"  # part of every key: a change of layout makes new files


class DecodedImages:
    """uint8 images (N, 3, S, S) with a `filled` flag each, in memory shared with workers."""

    def __init__(self, pixels: torch.Tensor, filled: torch.Tensor, where: str) -> None:
        self.pixels, self.filled, self.where = pixels, filled, where

    @classmethod
    def in_memory(cls, count: int, size: int) -> DecodedImages:
        pixels = torch.empty((count, 3, size, size), dtype=torch.uint8).share_memory_()
        return cls(pixels, torch.zeros(count, dtype=torch.uint8).share_memory_(), "memory")

    @classmethod
    def on_disk(cls, directory: Path, key: str, count: int, size: int) -> DecodedImages:
        """Map `directory/key.{pixels,filled}`, creating them (sparse, all unfilled) if new."""
        shape = (count, 3, size, size)
        pixels = map_file(directory / f"{key}.pixels", int(np.prod(shape)))
        filled = map_file(directory / f"{key}.filled", count)
        return cls(pixels.view(shape), filled, str(directory / key))

    def get(self, index: int) -> torch.Tensor | None:
        """The cached view of sample `index`, or None when it was not decoded yet."""
        return self.pixels[index] if self.filled[index] else None

    def put(self, index: int, image: torch.Tensor) -> torch.Tensor:
        """Keep `image` (3, S, S uint8); the flag goes last, so a half-written view is unread."""
        self.pixels[index] = image
        self.filled[index] = 1
        return self.pixels[index]


def map_file(path: Path, size: int) -> torch.Tensor:
    """A uint8 tensor of `size` bytes mapped (shared) onto `path`; made whole-or-not if new.

    A new file is sized under a temporary name, then renamed: two runs that start together
    each map a whole file (the one whose rename lost keeps its own, unlinked, to the end).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.stat().st_size != size:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            handle.truncate(size)
        os.replace(tmp, path)
    return torch.from_file(str(path), shared=True, size=size, dtype=torch.uint8)


def files_key(samples: list[tuple[str, int]], settings: str) -> str:
    """A hash of each file's path, size and modification time, and of the decode settings."""
    digest = hashlib.sha256(f"{FORMAT}\n{settings}\n".encode())
    for path, _ in samples:
        stat = os.stat(path)
        digest.update(json.dumps([path, stat.st_size, stat.st_mtime_ns]).encode())
    return digest.hexdigest()[:24]


def cache_mode(cfg: DictConfig, datasets: list[Any], prep: Any) -> str:
    """`data.cache`, with `auto` made memory or none by the decoded size of all splits."""
    if cfg.cache not in CACHE_CHOICES:
        raise FinetuneError(f"data.cache={cfg.cache} must be one of {', '.join(CACHE_CHOICES)}")
    if cfg.cache != "auto":
        return cfg.cache
    images = sum(len(d) for d in dict.fromkeys(datasets))
    needed_mb = images * 3 * prep.image_size**2 / 2**20
    budget_mb = min(cfg.cache_memory_mb, free_shared_memory_mb() / 2)
    if needed_mb <= budget_mb:
        return "memory"
    log.info(
        "Decoded images not cached: %.0f MB > %.0f MB (data.cache_memory_mb, or half the free "
        "shared memory); data.cache=disk keeps them in files instead",
        needed_mb,
        budget_mb,
    )
    return "none"


def free_shared_memory_mb() -> float:
    """Free space of /dev/shm, where shared tensors live on Linux (infinite where it is not)."""
    try:
        return shutil.disk_usage("/dev/shm").free / 2**20
    except OSError:
        return math.inf


def attach_caches(cfg: DictConfig, datasets: list[Any], prep: Any) -> Any:
    """Give each image-folder dataset a cache and the view it keeps; the views' eval transform."""
    from timm.data import create_transform

    timm_eval = create_transform(
        prep.image_size,
        is_training=False,
        mean=prep.mean,
        std=prep.std,
        interpolation=prep.interpolation,
    )
    view, eval_tf = decoded_transforms(timm_eval)
    mode, size = cache_mode(cfg, datasets, prep), prep.image_size
    for dataset in dict.fromkeys(datasets):  # test may be val itself
        if mode == "memory":
            dataset.decoded = DecodedImages.in_memory(len(dataset), size)
        else:
            settings = f"{view!r} background={dataset.background}"  # what a pixel is made of
            key = files_key(dataset.samples, settings)
            dataset.decoded = DecodedImages.on_disk(Path(cfg.cache_dir), key, len(dataset), size)
        dataset.view, dataset.batch_transform = view, eval_tf
    where = sorted({d.decoded.where for d in datasets})
    log.info("Decoded images cached (data.cache=%s): %s", cfg.cache, ", ".join(where))
    return eval_tf


def train_transform_on_views(
    dataset: Any, recipe: Any, augmenting: bool, batched: Any = None
) -> Any:
    """The training transform of `dataset`, which may hand out cached views (uint8 tensors).

    The recipe's transforms are written for PIL images. On cached views, `batched` (the same
    recipe on tensors, a batch at a time: data/view_augment.py) replaces them where the recipe
    allows; otherwise each view becomes a PIL image again. Without augmentation the dataset
    keeps the views' eval transform, so training reads bitwise what decoding would give.
    """
    if getattr(dataset, "decoded", None) is None:
        return recipe
    if not augmenting:
        return dataset.transform
    if batched is not None:
        return batched
    from torchvision.transforms import v2

    return v2.Compose([v2.ToPILImage(), recipe])


def pixels_of(image: Any) -> torch.Tensor:
    """A PIL RGB image as a (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def to_unit_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 to float in [0, 1], the very operation of ToTensor (a named function: picklable)."""
    return pixels.float().div(255)


def decoded_transforms(timm_eval: Any) -> tuple[Any, Any]:
    """(view, eval): the PIL view to cache, and what turns it into the model's input.

    `timm_eval` is timm's eval transform: its resize and crop make the view, its Normalize
    ends the tensor transform, so the eval input is the one decoding gives. Both steps are
    elementwise, so eval works on a batch of views as well (bitwise as on each view alone).
    """
    from torchvision.transforms import v2

    steps = list(timm_eval.transforms)
    view, normalize = v2.Compose(steps[:-2]), steps[-1]
    return view, v2.Compose([v2.Lambda(to_unit_float), normalize])
