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
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from finetune.models.source import ModelInfo
from finetune.safety.errors import FinetuneError

SOURCES = ("timm", "torchvision", "hf", "smp", "hf_text")

__all__ = ["SOURCES", "ModelInfo", "build_model", "count_parameters", "source_of"]


def source_of(name: str) -> ModuleType:
    """The source module for `model.source` (a name from the composed config, checked here)."""
    if name not in SOURCES:
        raise FinetuneError(f"model.source={name} is unknown; use one of {', '.join(SOURCES)}")
    return importlib.import_module(f"finetune.models.{name}")


def build_model(cfg: DictConfig, num_classes: int) -> tuple[nn.Module, ModelInfo]:
    """Create `cfg.name` from `cfg.source` with a `num_classes` head and its pretrained weights."""
    source = source_of(cfg.source)
    check_model_kwargs(OmegaConf.to_container(cfg.kwargs, resolve=True), source, "model.kwargs")
    return source.build(cfg, num_classes)


def check_model_kwargs(kwargs: dict[str, Any], source: ModuleType, where: str) -> None:
    """model.kwargs reach the model's constructor, never the loader's own options.

    Those options (timm's checkpoint_path or pretrained_cfg_overlay, transformers'
    trust_remote_code or cache_dir, torchvision's weights) make a library read a file, fetch
    weights or run a repository's code: which weights is for model.pretrained to say, and a
    config read back from a checkpoint must never say it. Each source lists its loader's options
    (`loader_options()`, from the loader's own signature where it has one).
    """
    refused = sorted(source.loader_options() & set(kwargs))
    if refused:
        name = source.__name__.rsplit(".", 1)[-1]
        raise FinetuneError(
            f"{where} sets {', '.join(refused)}, an option of the {name} loader itself, not of "
            "the model; give weights with model.pretrained=PATH instead"
        )


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total, trainable and frozen parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
