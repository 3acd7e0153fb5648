"""What a run needs before it starts: a device, seeds, a model summary."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from torch import nn

from finetune.safety.checks import check_config  # noqa: F401 (re-exported for callers)
from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """auto: cuda, then mps, then cpu; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FinetuneError(
            f"trainer.device={name} but no CUDA device is available; use trainer.device=auto or cpu"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise FinetuneError(f"trainer.device={name} but MPS is not available; use cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_summary(model: nn.Module, example: torch.Tensor, device: torch.device) -> str:
    """torchinfo's layer table of a forward pass on `example` (the task's), for train.log."""
    from torchinfo import summary

    was_training = model.training
    table = summary(
        model,
        input_data=[example.to(device)],
        device=device,
        verbose=0,
        depth=3,
        col_names=("output_size", "num_params", "trainable"),
    )
    model.train(was_training)
    return f"Model summary:\n{table}"
