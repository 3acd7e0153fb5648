"""Images with masks (segmentation): the data set and its joint transforms.

A sample is (image, mask): the image a float (3, H, W) tensor in [0, 1] (in memory) or a file,
the mask a (H, W) tensor of class indices (`data.ignore_index` where no class is known). The
transforms are torchvision's transforms.v2 on (tv_tensors.Image, tv_tensors.Mask) together, so
that a random crop, scale or flip moves both the same way, and masks resize with nearest
neighbours (v2 picks that for a Mask).

Each data set also holds `labels`: per image, a 0/1 row of the classes its mask shows. That is
what class counts, the split manifest and stratification read without decoding masks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset
from torchvision import tv_tensors

if TYPE_CHECKING:
    from finetune.data.loaders import Preprocessing


class MaskedImages(Dataset):
    """(image, mask) pairs, each read by `load(index)`, with a joint transform set later."""

    def __init__(
        self,
        load: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
        labels: torch.Tensor,
        root: Any = None,
        samples: list[tuple[str, Any]] | None = None,
    ) -> None:
        self.load, self.labels = load, labels
        if root is not None:  # files: the split manifest lists them (data/manifest.py)
            self.root, self.samples = root, samples
        self.transform: Any = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


def image_tensor(image: Any) -> tv_tensors.Image:
    """A PIL image as float RGB in [0, 1], (3, H, W): how every segmentation image is read."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1))


def presence(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, num_classes) 0/1 rows: which classes each (H, W) mask of `masks` shows."""
    rows = torch.zeros(len(masks), num_classes)
    for i, mask in enumerate(masks):
        shown = mask.unique()
        rows[i, shown[shown < num_classes].long()] = 1.0
    return rows


def mask_eval_transform(prep: Preprocessing) -> Any:
    """Resize (nearest for the mask) and normalise the image: what validation and test see."""
    from torchvision.transforms import v2

    size = (prep.image_size, prep.image_size)
    return v2.Compose(
        [
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Resize(size, antialias=True),
            v2.Normalize(prep.mean, prep.std),
        ]
    )


def mask_train_transform(data: DictConfig, prep: Preprocessing) -> Any:
    """The same random scale-crop and flips on image and mask (`data.crop_scale`, `data.hflip`)."""
    from torchvision.transforms import v2

    size = (prep.image_size, prep.image_size)
    return v2.Compose(
        [
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.RandomResizedCrop(size, scale=tuple(data.crop_scale), antialias=True),
            v2.RandomHorizontalFlip(p=data.hflip),
            v2.Normalize(prep.mean, prep.std),
        ]
    )
