"""Models from the source `model.source` names: timm (default), torchvision or hf (transformers).

    model, info = build_model(cfg.model, num_classes)

Each source is one module here (timm.py, torchvision.py, hf.py) with `build(cfg, num_outputs)`
and `save_native(model, info, run_dir, checkpoints, classes)`; ModelInfo (source.py) tells
the rest of the code where the head and the stages are and which preprocessing the weights
expect.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from omegaconf import DictConfig
from torch import nn

from finetune.models.source import ModelInfo
from finetune.safety.errors import FinetuneError

SOURCES = ("timm", "torchvision", "hf")

__all__ = ["SOURCES", "ModelInfo", "build_model", "count_parameters", "source_of"]


def source_of(name: str) -> ModuleType:
    """The source module for `model.source` (a name from the composed config, checked here)."""
    if name not in SOURCES:
        raise FinetuneError(f"model.source={name} is unknown; use one of {', '.join(SOURCES)}")
    return importlib.import_module(f"finetune.models.{name}")


def build_model(cfg: DictConfig, num_classes: int) -> tuple[nn.Module, ModelInfo]:
    """Create `cfg.name` from `cfg.source` with a `num_classes` head and its pretrained weights."""
    return source_of(cfg.source).build(cfg, num_classes)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total, trainable and frozen parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
