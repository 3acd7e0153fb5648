"""timm's training recipe on cached views, a batch at a time (data/view_augment.py)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from finetune.data.view_augment import CROP_TRIES, DRAWS, ViewAugment, view_recipe

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
JITTER_STEPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)


def recipe(**knobs: float) -> ViewAugment:
    settings = {"hflip": 0.5, "vflip": 0.3, "color_jitter": 0.4} | knobs
    return ViewAugment(
        32, (0.08, 1.0), (3 / 4, 4 / 3), interpolation="bilinear", mean=MEAN, std=STD, **settings
    )


def torchvision_steps(
    view: torch.Tensor, transform: ViewAugment, row: torch.Tensor
) -> torch.Tensor:
    """One view through torchvision's own functions, with the parameters its draws give."""
    top, left, h, w = transform.crop_box(row.tolist(), *view.shape[-2:])
    image = TF.resized_crop(
        view.float() / 255, top, left, h, w, [32, 32], InterpolationMode.BILINEAR, antialias=False
    )
    if row[4 * CROP_TRIES] < transform.hflip:
        image = TF.horizontal_flip(image)
    if row[4 * CROP_TRIES + 1] < transform.vflip:
        image = TF.vertical_flip(image)
    jitter = row[4 * CROP_TRIES + 2 :].float()
    factors = (1 - transform.jitter) + 2 * transform.jitter * jitter[:3]
    for step in jitter[3:].argsort().tolist():
        image = JITTER_STEPS[step](image, float(factors[step]))
    return TF.normalize(image, MEAN, STD)


@pytest.mark.parametrize("shape", [(32, 32), (40, 28)])
def test_each_view_is_torchvisions_crop_flip_jitter_with_its_own_draws(
    shape: tuple[int, int],
) -> None:
    views = torch.randint(0, 256, (48, 3, *shape), dtype=torch.uint8)
    transform = recipe()
    torch.manual_seed(0)
    batch = transform(views)
    torch.manual_seed(0)
    draws = torch.rand(48, DRAWS, dtype=torch.float64)
    for view, out, row in zip(views, batch, draws, strict=True):
        torch.testing.assert_close(out, torchvision_steps(view, transform, row), atol=1e-5, rtol=0)
    assert batch.shape == (48, 3, 32, 32)


def test_a_batch_is_bitwise_its_views_one_by_one() -> None:
    views = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    transform = recipe()
    torch.manual_seed(5)
    batch = transform(views)
    torch.manual_seed(5)
    one_by_one = torch.stack([transform(view) for view in views])
    assert torch.equal(batch, one_by_one)


def test_crop_boxes_keep_timms_area_and_aspect_ranges_and_fall_back_to_the_centre() -> None:
    transform = recipe()
    generator = torch.Generator().manual_seed(0)
    for row in torch.rand(500, DRAWS, generator=generator, dtype=torch.float64).tolist():
        top, left, h, w = transform.crop_box(row, 40, 30)
        assert 0 <= top <= 40 - h and 0 <= left <= 30 - w
        assert 0.08 * 1200 * 0.8 <= h * w <= 1200  # rounding moves the area a little
        assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
    # No try fits (every area over the image): timm's centre crop at the nearest ratio.
    too_big = ViewAugment(32, (2.0, 3.0), (3 / 4, 4 / 3), 0, 0, 0, "bilinear", MEAN, STD)
    assert too_big.crop_box([0.5] * DRAWS, 64, 16) == (
        (64 - round(16 / (3 / 4))) // 2,
        0,
        round(16 / (3 / 4)),
        16,
    )
    assert too_big.crop_box([0.5] * DRAWS, 30, 30) == (0, 0, 30, 30)  # a ratio in range: whole


def test_recipes_that_draw_per_image_on_pil_are_left_to_timm() -> None:
    prep = type(
        "Prep", (), {"image_size": 32, "mean": MEAN, "std": STD, "interpolation": "bicubic"}
    )
    light = OmegaConf.load("conf/augment/light.yaml")
    assert isinstance(view_recipe(light, prep), ViewAugment)
    assert view_recipe(OmegaConf.merge(light, {"re_prob": 0.25}), prep) is None
    assert view_recipe(OmegaConf.merge(light, {"auto_augment": "rand-m9-mstd0.5"}), prep) is None
