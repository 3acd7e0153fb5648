"""Random shifts and rotations of tensor images (digits), a whole batch in one grid_sample.

torchvision's RandomAffine draws one angle and shift per call, so a batch went through it image
by image. On the default run (digits at 32 px, batch 64, 2 threads) a loader pass over the 1,257
training images took 550-740 ms that way, about a tenth of an epoch, and takes 28-30 ms here:
every image of a batch draws its own angle and shift, and one `grid_sample` moves them all.

The result is torchvision's, image for image: the draws are RandomAffine's (an angle uniform in
[-degrees, degrees], a shift uniform in +-translate of the side, rounded to whole pixels), the
matrix is its inverse affine matrix about the centre, and the sampling is its tensor kernel's
(nearest pixel, zeros outside). Each image takes its three draws in turn from torch's generator,
and every step after the draws works on each image alone, so a batch is bitwise its images
transformed one at a time from the same generator state: the promise of
`TensorImages.in_one_piece`, which lets a seeded batch load in one piece (data/seeding.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class RandomShiftRotate:
    """Each image turned by a random angle and moved by a random whole-pixel shift.

    Takes one image (C, H, W) or a batch (N, C, H, W) of float images.
    """

    # A batch comes out bitwise as its images one by one (see the module docstring).
    batches_as_samples = True

    def __init__(self, degrees: float, translate: float) -> None:
        self.degrees = float(degrees)
        self.translate = float(translate)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch = images.unsqueeze(0) if images.ndim == 3 else images
        n, _, height, width = batch.shape
        draws = torch.rand(n, 3).tolist()  # per image: angle, x shift, y shift
        theta = torch.tensor(
            [self.inverse_matrix(draw, width, height) for draw in draws], dtype=batch.dtype
        ).view(n, 2, 3)
        moved = F.grid_sample(
            batch,
            sampling_grid(theta, width, height),
            mode="nearest",
            padding_mode="zeros",
            align_corners=False,
        )
        return moved[0] if images.ndim == 3 else moved

    def inverse_matrix(self, draw: list[float], width: int, height: int) -> list[float]:
        """Where each output pixel reads from, as torchvision's `_get_inverse_affine_matrix`
        computes it for a rotation about the centre and a shift (no scale, no shear)."""
        angle = self.degrees * (2.0 * draw[0] - 1.0)
        shift_x = round(self.translate * width * (2.0 * draw[1] - 1.0))
        shift_y = round(self.translate * height * (2.0 * draw[2] - 1.0))
        cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        return [cos, sin, -cos * shift_x - sin * shift_y, -sin, cos, sin * shift_x - cos * shift_y]

    def __repr__(self) -> str:
        return f"RandomShiftRotate(degrees={self.degrees}, translate={self.translate})"


def sampling_grid(theta: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """`grid_sample`'s (N, H, W, 2) grid for inverse affine matrices in pixels about the centre.

    torchvision's `_affine_grid`, computed elementwise so that no image's grid depends on the
    batch it is in (a batched matrix product may sum in another order).
    """
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height)
    scaled = theta / torch.tensor([0.5 * width, 0.5 * height], dtype=theta.dtype).view(1, 2, 1)
    x, y = xs.view(1, 1, width), ys.view(1, height, 1)
    coords = [
        scaled[:, row, 0].view(-1, 1, 1) * x
        + scaled[:, row, 1].view(-1, 1, 1) * y
        + scaled[:, row, 2].view(-1, 1, 1)
        for row in (0, 1)
    ]
    return torch.stack(coords, dim=-1)
