"""A finished run's best weights in its source's own format, for that ecosystem's tools.

timm: checkpoints/config.json beside model.safetensors (`timm.create_model("local-dir:...")`);
transformers: <run>/hf (`from_pretrained(<run>/hf)`, with id2label); torchvision has no folder
format (checkpoints/model.safetensors is its state dict). A LoRA run's adapters are merged first,
so the ecosystem sees a plain model.
"""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import DictConfig
from torch import nn

from finetune.engine.checkpoint import model_state, save_safetensors, unwrap
from finetune.models.factory import source_of
from finetune.models.lora import merge_lora
from finetune.models.source import ModelInfo


def save_native(
    model: nn.Module, info: ModelInfo, cfg: DictConfig, run_dir: Path, classes: list[str]
) -> None:
    """Write the source's own format of `model` (already holding the best weights)."""
    model = unwrap(model)
    checkpoints = run_dir / cfg.checkpoint.dirname
    if cfg.freeze.policy == "lora":
        model = merge_lora(copy.deepcopy(model))
        if cfg.checkpoint.save_safetensors:  # plain weights, as the source's tools expect
            metadata = {"model": cfg.model.name, "classes": ",".join(classes)}
            save_safetensors(model_state(model), checkpoints / "model.safetensors", metadata)
    source_of(info.source).save_native(model, info, run_dir, checkpoints, classes)
