"""Augmentation recipes (data/augment.py), the augmented grid, and their refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from finetune.data.augment import BatchMixer, batch_mixer, train_transform
from finetune.data.loaders import Preprocessing, transforms_for
from finetune.models.features import check_cache_features
from finetune.records.augmented import augmented_batch
from finetune.safety.errors import FinetuneError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
PREP = Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear")
DATA_ON = OmegaConf.create({"augment": True})
SOFT = "timm.loss.SoftTargetCrossEntropy"


def recipe(name: str, **overrides) -> DictConfig:
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "augment" / f"{name}.yaml"), overrides)


def seeded(transform, image, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    np.random.seed(seed)
    import random

    random.seed(seed)
    return transform(image)


def test_light_is_what_runs_computed_before_the_recipes() -> None:
    """The default recipe must not change today's runs: same transforms, same outputs."""
    image = torch.rand(3, 8, 8)
    before = transforms_for("tensor", PREP, augment=True)[0]
    now = train_transform(recipe("light"), DATA_ON, "tensor", PREP)
    assert torch.equal(seeded(before, image), seeded(now, image))
    pil = Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8"))
    before = transforms_for("pil", PREP, augment=True)[0]
    now = train_transform(recipe("light"), DATA_ON, "pil", PREP)
    assert repr(before) == repr(now)
    assert torch.equal(seeded(before, pil), seeded(now, pil))
    assert batch_mixer(recipe("light"), DATA_ON, 10, 0) is None


def test_none_and_data_augment_false_give_the_evaluation_transform() -> None:
    image = torch.rand(3, 8, 8)
    eval_tf = transforms_for("tensor", PREP, augment=False)[1]
    off = OmegaConf.create({"augment": False})
    for augment, data in ((recipe("none"), DATA_ON), (recipe("strong"), off)):
        assert torch.equal(train_transform(augment, data, "tensor", PREP)(image), eval_tf(image))
        assert batch_mixer(augment, data, 10, 0) is None


def test_strong_recipe_builds_randaugment_erasing_and_mixing() -> None:
    strong = recipe("strong")
    pil_tf = train_transform(strong, DATA_ON, "pil", PREP)
    assert "RandAugment" in repr(pil_tf) and "RandomErasing" in repr(pil_tf)
    tensor_tf = train_transform(strong, DATA_ON, "tensor", PREP)
    assert "RandAugment" in repr(tensor_tf) and "RandomErasing" in repr(tensor_tf)
    assert tensor_tf(torch.rand(3, 8, 8)).shape == (3, 32, 32)
    assert isinstance(batch_mixer(strong, DATA_ON, 10, 0), BatchMixer)


def test_mixing_is_a_function_of_seed_epoch_and_batch_and_leaves_numpy_alone() -> None:
    mixer = BatchMixer(recipe("strong"), num_classes=4, seed=7)
    images, targets = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    first = [mixer(images.clone(), targets, epoch=2, batch=b) for b in (1, 2)]
    assert np.random.rand() == expected_next  # the global stream did not move
    again = mixer(images.clone(), targets, epoch=2, batch=2)
    assert torch.equal(again[0], first[1][0]) and torch.equal(again[1], first[1][1])
    assert not torch.equal(first[0][0], first[1][0])
    soft = first[0][1]
    assert soft.shape == (6, 4) and torch.allclose(soft.sum(1), torch.ones(6))
    odd = mixer(images[:5].clone(), targets[:5], epoch=1, batch=1)
    assert odd[0].shape[0] == 4  # timm pairs images: an odd batch drops its last


def test_the_augmented_grid_moves_no_random_stream() -> None:
    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int):
            return torch.rand(3, 4, 4) + np.random.rand() + __import__("random").random(), index

    torch.manual_seed(0)
    np.random.seed(0)
    expected = (torch.rand(1), np.random.rand())
    torch.manual_seed(0)
    np.random.seed(0)
    batch = augmented_batch(Images(), 4, BatchMixer(recipe("strong"), 4, 0))
    assert batch.shape == (4, 3, 4, 4)
    assert (torch.rand(1), np.random.rand()) == expected


def cache_cfg(**augment) -> DictConfig:
    return OmegaConf.create(
        {
            "freeze": {"cache_features": True, "policy": "backbone"},
            "data": {"augment": True},
            "augment": OmegaConf.to_container(recipe(augment.pop("name", "none"), **augment)),
        }
    )


def test_feature_cache_refuses_mixing_and_augmentation_in_one_line() -> None:
    check_cache_features(cache_cfg(name="none"))  # augmentation off: fine
    with pytest.raises(FinetuneError, match="cannot mix images.*augment=strong"):
        check_cache_features(cache_cfg(name="strong"))
    with pytest.raises(FinetuneError, match="needs augmentation off"):
        check_cache_features(cache_cfg(name="light"))


def test_mixing_needs_the_soft_target_loss_and_a_single_label_task() -> None:
    from finetune.data.augment import check_mixing

    def cfg(loss: str, task: str = "finetune.tasks.classification.Classification") -> DictConfig:
        return OmegaConf.create(
            {
                "augment": OmegaConf.to_container(recipe("strong")),
                "data": {"augment": True},
                "loss": {"_target_": loss},
                "task": {"_target_": task},
            }
        )

    check_mixing(cfg(SOFT))
    with pytest.raises(FinetuneError, match="use loss=soft_target_cross_entropy"):
        check_mixing(cfg("torch.nn.CrossEntropyLoss"))
    with pytest.raises(FinetuneError, match="single-label classification only"):
        check_mixing(cfg(SOFT, "finetune.tasks.multilabel.MultiLabel"))
