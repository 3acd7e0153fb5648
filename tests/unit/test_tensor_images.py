"""Digits held as tensors: upscaled once and loaded a batch at a time (augmented ones too),
bitwise as per sample."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from finetune.data import Preprocessing, build_loaders, build_splits
from finetune.data.augment import train_transform
from finetune.data.tensors import TensorImages

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


PREP = Preprocessing(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")


def loaders(interpolation: str, **overrides: object) -> dict:
    cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / "data" / "digits.yaml"), overrides)
    prep = dataclasses.replace(PREP, interpolation=interpolation)
    return build_loaders(cfg, build_splits(cfg, seed=0), prep, 0, torch.device("cpu"))


def batches(loader: torch.utils.data.DataLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images, labels) for images, labels in loader]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("augment", [True, False])
def test_upscaled_once_and_batched_inputs_are_bitwise_the_per_sample_ones(
    interpolation: str,
    augment: bool,
    monkeypatch,  # noqa: ANN001
) -> None:
    once = loaders(interpolation, augment=augment)
    assert once["train"].dataset.images.shape[-1] == 32
    once_batches = {split: batches(once[split]) for split in ("train", "val")}
    # As before: resized per sample, every batch loaded sample by sample.
    monkeypatch.setattr(TensorImages, "in_one_piece", lambda self, indices: False)
    per_sample = loaders(interpolation, augment=augment, upscale_once_mb=0)
    assert per_sample["train"].dataset.images.shape[-1] == 8
    for split in ("train", "val"):
        for (a, labels_a), (b, labels_b) in zip(
            batches(per_sample[split]), once_batches[split], strict=True
        ):
            assert torch.equal(a, b) and torch.equal(labels_a, labels_b)


def test_validation_and_shifted_training_load_in_one_piece_and_per_image_recipes_do_not() -> None:
    built = loaders("bicubic", augment=True)
    everything = list(range(8))
    assert built["val"].dataset.in_one_piece(everything)  # the eval transform
    assert built["train"].dataset.in_one_piece(everything)  # shifts and rotations, batched
    images = TensorImages(torch.rand(8, 3, 32, 32), torch.arange(8))
    for name, batched in (("light", True), ("strong", False)):  # strong: RandAugment on PIL
        augment = OmegaConf.load(CONF_DIR / "augment" / f"{name}.yaml")
        images.transform = train_transform(
            augment, OmegaConf.create({"augment": True}), "tensor", PREP
        )
        assert images.in_one_piece(everything) == batched


def test_a_set_over_the_budget_stays_at_its_own_size() -> None:
    built = loaders("bicubic", upscale_once_mb=1)  # 1,257 x 3 x 32 x 32 floats: 15 MB
    assert built["train"].dataset.images.shape[-1] == 8
