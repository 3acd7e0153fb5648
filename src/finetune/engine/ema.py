"""The exponential moving average of the weights (`trainer.ema_decay`), and its structure.

timm's ModelEmaV3 keeps a deep copy of the model and pairs its tensors with the model's by
position. A thaw (`freeze=gradual`) turns the model's FrozenBatchNorm2d layers back into
BatchNorm2d, which adds a `num_batches_tracked` buffer to each: from then on the copy made
at the start no longer lines up, and pairing by position would fail or average one tensor into
another. So at every thaw the copy takes the model's structure again, keeping its averages by
name.
"""

from __future__ import annotations

import copy
import logging

import torch
from timm.utils import ModelEmaV3
from torch import nn

log = logging.getLogger(__name__)


def build_ema(model: nn.Module, decay: float | None) -> ModelEmaV3 | None:
    """An EMA of `model` with `decay`, or None when `trainer.ema_decay` is null (off)."""
    return ModelEmaV3(model, decay=decay) if decay else None


@torch.no_grad()
def follow_structure(ema: ModelEmaV3, model: nn.Module) -> None:
    """Rebuild the EMA copy as `model` is now, carrying its averages over by name.

    A tensor the copy did not have (a thawed BatchNorm's `num_batches_tracked`) starts from the
    model's value, as ModelEmaV3 would start it.
    """
    averaged = ema.module.state_dict()
    rebuilt = copy.deepcopy(model).eval()
    carried = 0
    for name, tensor in rebuilt.state_dict().items():
        old = averaged.get(name)
        if old is not None and old.shape == tensor.shape:
            tensor.copy_(old)
            carried += 1
    ema.module = rebuilt
    log.debug("EMA copy rebuilt after a thaw: %d tensors carried over by name", carried)
