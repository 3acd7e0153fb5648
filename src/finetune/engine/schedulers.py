"""Learning-rate schedules, all stepped once per optimizer step.

Each factory takes the optimizer and the run's length (known only at run time) and returns a
LambdaLR, so the loop treats every schedule alike and a resume restores it exactly.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine_with_warmup(
    optimizer: Optimizer,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: float,
    min_lr_ratio: float,
) -> LambdaLR:
    """Linear warmup from ~0 to the base LR, then cosine decay to `min_lr_ratio` of it."""
    total = max(1, steps_per_epoch * epochs)
    warmup = min(int(warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def step_decay(
    optimizer: Optimizer, steps_per_epoch: int, epochs: int, step_epochs: int, gamma: float
) -> LambdaLR:
    """Multiply the LR by `gamma` every `step_epochs` epochs."""
    del epochs  # the schedule does not depend on the run's length
    period = max(1, step_epochs * steps_per_epoch)
    return LambdaLR(optimizer, lambda step: gamma ** (step // period))


def constant(optimizer: Optimizer, steps_per_epoch: int, epochs: int) -> LambdaLR:
    """Keep the base LR."""
    del steps_per_epoch, epochs
    return LambdaLR(optimizer, lambda step: 1.0)
