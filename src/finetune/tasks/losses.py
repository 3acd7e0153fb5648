"""The criterion from the `loss` group: any loss module named by `_target_`, with class weights.

`class_weights` is this project's key, not the loss's: a list (one weight per class or label)
or `auto`, inverse class frequency of the training split (n / (k * count), so that a balanced
set gets weights of 1). It is passed to the loss as `weight`, which torch's CrossEntropyLoss
and BCEWithLogitsLoss both take.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from finetune.safety.errors import FinetuneError


def build_loss(
    loss_cfg: DictConfig, num_classes: int, train_labels: Callable[[], torch.Tensor]
) -> nn.Module:
    """Instantiate `loss_cfg`; `train_labels` is called only for class_weights=auto."""
    from hydra.utils import instantiate

    options: dict[str, Any] = OmegaConf.to_container(loss_cfg, resolve=True)
    weights = options.pop("class_weights", None)
    if weights is None:
        return instantiate(options)
    if weights == "auto":
        weight = inverse_frequency(train_labels(), num_classes)
    else:
        weight = explicit_weights(weights, num_classes)
    return instantiate(options, weight=weight)


def inverse_frequency(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """n / (k * count) per class; labels are class indices, or 0/1 rows for multi-label."""
    counts = labels.sum(0) if labels.ndim == 2 else torch.bincount(labels, minlength=num_classes)
    counts = counts.double()
    if (counts == 0).any():
        empty = (counts == 0).nonzero().flatten().tolist()
        raise FinetuneError(
            f"loss.class_weights=auto: classes {empty} have no training samples; give "
            "loss.class_weights as a list or drop those classes (data.classes)"
        )
    return (counts.sum() / (num_classes * counts)).float()


def explicit_weights(weights: Any, num_classes: int) -> torch.Tensor:
    if not isinstance(weights, list) or len(weights) != num_classes:
        raise FinetuneError(
            f"loss.class_weights={weights} must be auto, null or a list of {num_classes} numbers "
            "(one per class)"
        )
    return torch.tensor([float(w) for w in weights])
