"""A sum of losses (cross-entropy + Dice for segmentation), each from the `loss` group's YAML."""

from __future__ import annotations

import torch
from torch import nn


class LossSum(nn.Module):
    """The sum of `losses` on the same (outputs, targets): smp has no combined loss of its own."""

    def __init__(self, losses: list[nn.Module]) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sum(loss(outputs, targets) for loss in self.losses)
