"""Digit canvases, the embedded segmentation set (M2NIST-like), from scikit-learn's digits.

Each canvas is a `data.image_size` square holding 1..`data.max_digits` digits, each upscaled to
`data.digit_size` and placed at random; each pixel is labelled with the digit it belongs to
(classes "0".."9") or "background". Canvases of a split are drawn only from that split's
digits (a stratified, seeded split of the 1,797 digits), and everything is a function of the
seed alone: no download, the same set on every machine.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig
from torch.nn import functional as F

from finetune.data.masks import MaskedImages, presence
from finetune.data.splits import Splits, stratified_split
from finetune.safety.errors import FinetuneError

CLASS_NAMES = ["background", *[str(d) for d in range(10)]]
# A digit pixel at or above this intensity (of 1) is labelled as the digit, else background.
INK = 0.25


def digit_canvases_splits(cfg: DictConfig, seed: int) -> Splits:
    if cfg.folds is not None or cfg.classes is not None:
        raise FinetuneError(
            "data.folds and data.classes are not supported by data=digit_canvases; leave them null"
        )
    if not 8 <= cfg.digit_size <= cfg.image_size:
        raise FinetuneError(
            f"data.digit_size={cfg.digit_size} must be from 8 to data.image_size={cfg.image_size}"
        )
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    big = F.interpolate(images, size=(cfg.digit_size,) * 2, mode="bilinear").clamp(0, 1)[:, 0]
    rng = np.random.default_rng(seed)
    parts = [
        canvases(big[idx], digits.target[idx], cfg, rng)
        for idx in stratified_split(digits.target, cfg, seed)
    ]
    return Splits(*parts, CLASS_NAMES, "mask")


def canvases(
    pool: torch.Tensor, labels: np.ndarray, cfg: DictConfig, rng: np.random.Generator
) -> MaskedImages:
    """`canvases_per_digit * len(pool)` canvases of digits from `pool` at random places."""
    count, side, size = (
        int(round(cfg.canvases_per_digit * len(pool))),
        cfg.image_size,
        cfg.digit_size,
    )
    images = torch.zeros(count, side, side)
    masks = torch.zeros(count, side, side, dtype=torch.uint8)
    for i in range(count):
        for pick in rng.integers(0, len(pool), size=rng.integers(1, cfg.max_digits + 1)):
            top, left = rng.integers(0, side - size + 1, size=2)
            window = (slice(top, top + size), slice(left, left + size))
            digit = pool[pick]
            images[i][window] = torch.maximum(images[i][window], digit)
            masks[i][window][digit >= INK] = int(labels[pick]) + 1
    rgb = images.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    return MaskedImages(lambda k: (rgb[k], masks[k]), presence(masks, len(CLASS_NAMES)))
