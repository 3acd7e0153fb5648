"""Augmentation recipes (`augment=none|light|strong`): per-image transforms and batch mixing.

Per image, PIL data sets get timm's `create_transform(is_training=True, ...)` with the
recipe's knobs (random resized crop, flips, colour jitter, RandAugment/TrivialAugment, random
erasing); tensor data sets (digits) get small shifts and rotations, plus the same auto-augment
and erasing when the recipe asks. Per batch, timm's `Mixup` mixes images and labels (mixup,
cutmix, label smoothing) into soft targets.

`light` is what runs computed before these recipes existed. Where a batch can go through in one
piece it does, with its own draws from the same ranges: the digits' shifts and rotations
(data/shift_rotate.py) and crops, flips and colour jitter on cached folder views
(data/view_augment.py).
`data.augment=false` or `augment=none` turns everything off. Randomness: the per-image
transforms draw from the loader's (seeded) streams; the batch mixing draws from a numpy
generator seeded by (seed, epoch, batch index) alone, so a resumed run mixes the same batches
the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from finetune.data.loaders import Preprocessing, clamp01, tensor_resize, transforms_for
from finetune.safety.errors import FinetuneError

RECIPES = ("none", "light", "strong")


def augmenting(augment: DictConfig, data: DictConfig) -> bool:
    """Whether training images are augmented at all (data.augment and augment=... agree)."""
    if augment.name not in RECIPES:
        raise FinetuneError(f"augment={augment.name} must be one of {', '.join(RECIPES)}")
    return bool(data.augment) and augment.name != "none"


def mixing(augment: DictConfig, data: DictConfig) -> bool:
    """Whether batches are mixed (mixup or cutmix), which makes the targets soft."""
    return augmenting(augment, data) and (augment.mixup_alpha > 0 or augment.cutmix_alpha > 0)


def train_transform(augment: DictConfig, data: DictConfig, kind: str, prep: Preprocessing) -> Any:
    """The training transform of the recipe; the evaluation one when augmentation is off."""
    if not augmenting(augment, data):
        return transforms_for(kind, prep, augment=False)[1]
    if kind == "mask":  # images with masks: the same crop and flip on both (data/masks.py)
        from finetune.data.masks import mask_train_transform

        return mask_train_transform(data, prep)
    if kind == "pil":
        from timm.data import create_transform

        return create_transform(
            input_size=prep.image_size,
            is_training=True,
            mean=prep.mean,
            std=prep.std,
            interpolation=prep.interpolation,
            **pil_knobs(augment),
        )
    return tensor_transform(augment, prep)


def pil_knobs(augment: DictConfig) -> dict[str, Any]:
    """create_transform's keyword arguments from the recipe (tuples where timm wants them)."""
    return {
        "scale": tuple(augment.scale) if augment.scale is not None else None,
        "ratio": tuple(augment.ratio) if augment.ratio is not None else None,
        "hflip": augment.hflip,
        "vflip": augment.vflip,
        "color_jitter": augment.color_jitter,
        "auto_augment": augment.auto_augment,
        "re_prob": augment.re_prob,
        "re_mode": augment.re_mode,
        "re_count": augment.re_count,
    }


def tensor_transform(augment: DictConfig, prep: Preprocessing) -> Any:
    """Shifts and rotations for tensor images; auto-augment (on PIL) and erasing when asked.

    With the `light` knobs this is exactly the transform runs used before the recipes.
    """
    from torchvision.transforms import v2

    from finetune.data.shift_rotate import RandomShiftRotate

    steps: list[Any] = [
        tensor_resize(prep),  # at size already where the loaders upscaled once: a no-op
        v2.Lambda(clamp01),
        RandomShiftRotate(augment.degrees, augment.translate),
    ]
    if augment.auto_augment:
        steps += [v2.ToPILImage(), auto_augment(augment.auto_augment, prep), v2.PILToTensor()]
        steps += [v2.ToDtype(torch.float32, scale=True)]
    steps.append(v2.Normalize(prep.mean, prep.std))
    if augment.re_prob > 0:
        from timm.data.random_erasing import RandomErasing

        steps.append(
            RandomErasing(
                augment.re_prob, mode=augment.re_mode, max_count=augment.re_count, device="cpu"
            )
        )
    transform = v2.Compose(steps)
    # Without the PIL and erasing steps (which draw per image, in another order), a batch goes
    # through in one piece, bitwise as its images one by one (data/shift_rotate.py).
    transform.batches_as_samples = not augment.auto_augment and augment.re_prob == 0
    return transform


def auto_augment(config: str, prep: Preprocessing) -> Any:
    """timm's RandAugment ('rand-...'), AugMix ('augmix-...') or AutoAugment policy on PIL."""
    from timm.data.auto_augment import (
        augment_and_mix_transform,
        auto_augment_transform,
        rand_augment_transform,
    )

    fill = tuple(round(255 * m) for m in prep.mean)
    hparams = {"translate_const": int(prep.image_size * 0.45), "img_mean": fill}
    if config.startswith("rand"):
        return rand_augment_transform(config, hparams)
    if config.startswith("augmix"):
        return augment_and_mix_transform(config, hparams)
    return auto_augment_transform(config, hparams)


class BatchMixer:
    """timm's Mixup/CutMix with label smoothing, drawn from a generator of (seed, epoch, batch).

    timm draws from numpy's global generator; here each batch gets its own seeded state and the
    global one is put back, so nothing else's stream moves. timm pairs each image with its
    mirror in the batch, which needs an even batch: an odd batch drops its last image.
    """

    def __init__(self, augment: DictConfig, num_classes: int, seed: int) -> None:
        from timm.data import Mixup

        self.seed = seed
        self.mixup = Mixup(
            mixup_alpha=augment.mixup_alpha,
            cutmix_alpha=augment.cutmix_alpha,
            prob=augment.mix_prob,
            switch_prob=augment.switch_prob,
            mode=augment.mix_mode,
            label_smoothing=augment.label_smoothing,
            num_classes=num_classes,
        )

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, epoch: int, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images and their soft targets (one row of class probabilities per image)."""
        if images.shape[0] % 2:
            images, targets = images[:-1], targets[:-1]
        with numpy_seeded(self.seed, epoch, batch):
            return self.mixup(images, targets)


@contextlib.contextmanager
def numpy_seeded(*key: int) -> Iterator[None]:
    """numpy's global generator seeded from `key` inside, restored to its state after."""
    state = np.random.get_state()
    np.random.seed(np.random.SeedSequence(list(key)).generate_state(1)[0])
    try:
        yield
    finally:
        np.random.set_state(state)


SOFT_TARGET_LOSS = "timm.loss.SoftTargetCrossEntropy"
SINGLE_LABEL_TASK = "finetune.tasks.classification.Classification"


def check_mixing(cfg: DictConfig) -> None:
    """Mixing makes soft targets of single labels: it needs the soft-target loss."""
    if not mixing(cfg.augment, cfg.data):
        return
    if cfg.task._target_ != SINGLE_LABEL_TASK:
        raise FinetuneError(
            f"augment={cfg.augment.name} mixes images (mixup/cutmix), which this project does "
            "for single-label classification only; set augment.mixup_alpha=0 "
            "augment.cutmix_alpha=0"
        )
    if cfg.loss._target_ != SOFT_TARGET_LOSS:
        raise FinetuneError(
            f"augment={cfg.augment.name} mixes images (mixup/cutmix) into soft targets, which "
            f"loss._target_={cfg.loss._target_} does not train on; use "
            "loss=soft_target_cross_entropy, or augment.mixup_alpha=0 augment.cutmix_alpha=0"
        )


def batch_mixer(augment: DictConfig, data: DictConfig, num_classes: int, seed: int) -> Any:
    """A BatchMixer when the recipe mixes batches, else None."""
    return BatchMixer(augment, num_classes, seed) if mixing(augment, data) else None
