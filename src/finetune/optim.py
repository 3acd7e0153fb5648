"""Parameter groups for the optimizer."""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: with weight decay, and without it.

    Norm weights and biases (every tensor of one dimension) get no decay, as in timm and
    nanoGPT: decaying them only pulls normalisation towards zero. Frozen parameters are left
    out, so the optimizer holds no state for them.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
