"""timm's training recipe on cached views (uint8 tensors), a whole batch at a time.

With `data.cache`, each image is decoded once into a view at the model's side. Training
augmentation then turned every view back into a PIL image and ran timm's `create_transform`
on it, image by image: on the digits folder (test_resnet, 32 px, 2 threads) training ran at
700-740 images/s augmented against 1,110-1,250 without. Here the same steps run on a batch of
views in a few tensor operations:

- random resized crop: timm's crop box (`RandomResizedCropAndInterpolation.get_params`, ten
  tries at an area and an aspect ratio, else the centre), resampled to the output side by one
  `grid_sample` with the model's interpolation (bilinearly, exactly `F.resized_crop` without
  antialiasing, which a view at the output side never needs: its crops are no larger; bicubic
  taps may read a pixel beyond the crop's edge);
- horizontal and vertical flips, folded into that resampling;
- colour jitter: torchvision's `ColorJitter` brightness, contrast and saturation on floats,
  in an order drawn per image, each step clamped to [0, 1] as torchvision does;
- normalisation.

What differs from the PIL path: the pixels stay floats between the steps (PIL rounds to
uint8 after each), and timm's `interpolation: random` resamples bilinearly. The draws are new
too: each image takes a fixed number of uniforms in turn from torch's generator, and every step
after the draws works on each image alone, so a batch is bitwise its images one at a time from
the same generator state (what `ImageFiles.in_one_piece` needs).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

CROP_TRIES = 10  # timm's, and its default area and aspect ranges
TIMM_SCALE, TIMM_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
# Uniforms each image draws: (area, aspect, top, left) per crop try, two flips, three jitter
# factors, three numbers that order the jitter steps.
DRAWS = 4 * CROP_TRIES + 2 + 3 + 3
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


class ViewAugment:
    """Random resized crop, flips, colour jitter and normalisation of uint8 views (C, H, W)
    or batches of them (N, C, H, W), into the model's float input."""

    # A batch comes out bitwise as its images one by one (see the module docstring).
    batches_as_samples = True

    def __init__(
        self,
        size: int,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        hflip: float,
        vflip: float,
        color_jitter: float,
        interpolation: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> None:
        self.size = size
        self.scale, self.ratio = scale, ratio
        self.hflip, self.vflip = hflip, vflip
        self.jitter = float(color_jitter or 0.0)
        self.mode = (
            interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear"
        )
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        batch = pixels.unsqueeze(0) if pixels.ndim == 3 else pixels
        n, _, height, width = batch.shape
        draws = torch.rand(n, DRAWS, dtype=torch.float64)
        boxes = [self.crop_box(row, height, width) for row in draws.tolist()]
        top, left, h, w = torch.tensor(boxes, dtype=torch.float64).unbind(dim=1)
        flip_draws = draws[:, 4 * CROP_TRIES : 4 * CROP_TRIES + 2]
        flips = flip_draws < torch.tensor([self.hflip, self.vflip], dtype=torch.float64)
        xs = self.read_from(left, w, flips[:, 0], width).view(n, 1, self.size)
        ys = self.read_from(top, h, flips[:, 1], height).view(n, self.size, 1)
        grid = torch.stack([xs.expand(-1, self.size, -1), ys.expand(-1, -1, self.size)], dim=-1)
        images = F.grid_sample(
            batch.float().div(255),
            grid.float(),
            mode=self.mode,
            padding_mode="border",
            align_corners=False,
        )
        if self.mode == "bicubic":
            images = images.clamp(0, 1)  # bicubic overshoots, as PIL's does not
        if self.jitter > 0:
            images = self.color_jitter(images, draws[:, 4 * CROP_TRIES + 2 :].float())
        images = (images - self.mean) / self.std
        return images[0] if pixels.ndim == 3 else images

    def read_from(
        self, start: torch.Tensor, length: torch.Tensor, flip: torch.Tensor, side: int
    ) -> torch.Tensor:
        """Where each output pixel of one axis reads, in grid_sample's coordinates (-1 to 1 over
        `side`): the crop [start, start + length) resized to the output as `F.interpolate`
        does (pixel centres, `align_corners=False`, clamped to the crop), reversed if flipped."""
        out = torch.arange(self.size, dtype=torch.float64).expand(len(start), -1)
        out = torch.where(flip.view(-1, 1), self.size - 1 - out, out)
        start, length = start.view(-1, 1), length.view(-1, 1)
        source = start + (out + 0.5) * length / self.size - 0.5
        source = torch.minimum(torch.maximum(source, start), start + length - 1)
        return (2 * source + 1) / side - 1

    def crop_box(self, row: list[float], height: int, width: int) -> tuple[int, int, int, int]:
        """timm's RandomResizedCropAndInterpolation.get_params, on this image's uniforms."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for attempt in range(CROP_TRIES):
            u_area, u_aspect, u_top, u_left = row[4 * attempt : 4 * attempt + 4]
            target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u_area)
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u_aspect)
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
        in_ratio = width / height  # the fallback: the centre, at the nearest allowed ratio
        h, w = height, width
        if in_ratio < min(self.ratio):
            h = int(round(w / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w = int(round(h * max(self.ratio)))
        return (height - h) // 2, (width - w) // 2, h, w

    def color_jitter(self, images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and saturation, each image its own factors and order."""
        low, high = max(0.0, 1 - self.jitter), 1 + self.jitter
        factors = low + (high - low) * draws[:, :3]  # brightness, contrast, saturation
        order = draws[:, 3:].argsort(dim=1)  # which of them comes first, second, third
        for position in range(3):
            step = order[:, position : position + 1]
            factor = factors.gather(1, step).view(-1, 1, 1, 1)
            step = step.view(-1, 1, 1, 1)
            gray = grayscale(images)
            brightness = (images * factor).clamp(0, 1)
            contrast = blend(images, gray.mean(dim=(-3, -2, -1), keepdim=True), factor)
            saturation = blend(images, gray, factor)
            images = torch.where(
                step == 0, brightness, torch.where(step == 1, contrast, saturation)
            )
        return images


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale (one channel, kept as a dimension)."""
    r, g, b = images.unbind(dim=-3)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(dim=-3)


def blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's _blend for floats: factor * images + (1 - factor) * other, in [0, 1]."""
    return (factor * images + (1.0 - factor) * other).clamp(0, 1)


def view_recipe(augment: Any, prep: Any) -> ViewAugment | None:
    """The batched recipe for cached views, or None where a step draws per image on PIL
    (auto-augment, random erasing): those keep timm's transform, image by image."""
    from finetune.data.augment import pil_knobs

    knobs = pil_knobs(augment)  # the very knobs timm's create_transform gets
    if knobs["auto_augment"] or knobs["re_prob"] > 0:
        return None
    return ViewAugment(
        prep.image_size,
        knobs["scale"] or TIMM_SCALE,
        knobs["ratio"] or TIMM_RATIO,
        knobs["hflip"],
        knobs["vflip"],
        knobs["color_jitter"],
        prep.interpolation,
        prep.mean,
        prep.std,
    )
