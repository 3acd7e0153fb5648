"""Batched shifts and rotations (data/shift_rotate.py): torchvision's, image for image."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from finetune.data.shift_rotate import RandomShiftRotate


@pytest.mark.parametrize(
    ("degrees", "translate", "shape"), [(10, 0.1, (32, 32)), (30, 0.2, (28, 20))]
)
def test_each_image_is_torchvisions_affine_with_its_own_draws(
    degrees: float, translate: float, shape: tuple[int, int]
) -> None:
    height, width = shape
    images = torch.rand(64, 3, height, width)
    torch.manual_seed(0)
    moved = RandomShiftRotate(degrees, translate)(images)
    torch.manual_seed(0)
    draws = torch.rand(64, 3).tolist()  # per image: angle, x shift, y shift, in that order
    shifts = set()
    for image, out, (u_angle, u_x, u_y) in zip(images, moved, draws, strict=True):
        shift = [
            round(translate * width * (2 * u_x - 1)),
            round(translate * height * (2 * u_y - 1)),
        ]
        shifts.add(tuple(shift))
        expected = TF.affine(
            image, angle=degrees * (2 * u_angle - 1), translate=shift, scale=1.0, shear=[0.0, 0.0]
        )
        assert torch.equal(out, expected)
    assert len(shifts) > 5  # the images did move, each its own way


def test_a_batch_is_bitwise_its_images_one_by_one() -> None:
    images = torch.rand(16, 3, 32, 32)
    transform = RandomShiftRotate(10, 0.1)
    torch.manual_seed(3)
    batch = transform(images)
    torch.manual_seed(3)
    one_by_one = torch.stack([transform(image) for image in images])
    assert torch.equal(batch, one_by_one)
    assert not torch.equal(batch, images)
