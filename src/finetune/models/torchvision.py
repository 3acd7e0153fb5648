"""The torchvision source: `model.source=torchvision model.name=resnet50 model.weights=DEFAULT`.

Weights come from torchvision's weights API (`model.weights`: IMAGENET1K_V2, DEFAULT, ... or
null for none), read from the torch.hub cache or downloaded when download.pytorch.org answers;
the preprocessing from the same weights' transforms (resize, crop, mean, std, interpolation).
Stages follow torchvision's structures: the stem then `layer1..4` (ResNets), `features.N`
(MobileNet, EfficientNet, ConvNeXt, VGG, ...), `encoder.layers.N` (ViT).
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from finetune.models.heads import complete_stages, find_head, in_head, with_parameters
from finetune.models.source import (
    ModelInfo,
    Stage,
    hub_unreachable_reason,
    normalise_pretrained,
    weights_path,
)
from finetune.models.weights import load_into, load_state_dict_file
from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def loader_options() -> set[str]:
    """Options that fetch weights (`model.weights` and `model.pretrained` say which)."""
    return {"weights", "weights_backbone", "progress"}


def build(cfg: DictConfig, num_outputs: int) -> tuple[nn.Module, ModelInfo]:
    """torchvision's `cfg.name` with a `num_outputs` head and the asked-for weights."""
    import torchvision

    check_model_name(cfg.name)
    kwargs = OmegaConf.to_container(cfg.kwargs, resolve=True)
    model = torchvision.models.get_model(cfg.name, weights=None, num_classes=num_outputs, **kwargs)
    head = find_head(model, num_outputs, cfg.head, cfg.name)
    weights = weights_enum(cfg.name, cfg.weights)
    mode = normalise_pretrained(cfg.pretrained)
    source, loaded, notes = "random init", False, []
    if mode in ("auto", "true"):
        state_dict, source = hub_state_dict(cfg.name, weights, mode)
        if state_dict is not None:
            notes, loaded = load_into(model, state_dict, source, head), True
        elif mode == "auto" and weights is not None:
            notes = [f"no pretrained weights for {cfg.name} ({source}): training from random init"]
            log.warning(notes[0])
            source = "random init (auto: weights unavailable)"
    elif mode != "false":
        path = weights_path(mode)
        notes = load_into(model, load_state_dict_file(path), str(path), head)
        source, loaded = f"file:{path.resolve()}", True
    info = ModelInfo(cfg.name, num_outputs, source, loaded, notes, "torchvision", head)
    info.preprocessing = preprocessing(weights)
    info.stages = stages_of(model, head)
    return model, info


def check_model_name(name: str) -> None:
    """Fail with close torchvision classification names when `name` is not one."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    hint = f"close names: {', '.join(close)}" if close else f"one of {', '.join(names[:8])}, ..."
    raise FinetuneError(f"model.name={name} is not a torchvision classification model; {hint}")


def weights_enum(name: str, weights: str | None) -> Any:
    """torchvision's weights entry for `model.weights` (IMAGENET1K_V1, DEFAULT, ...) or None."""
    if weights is None:
        return None
    from torchvision.models import get_model_weights

    options = get_model_weights(name)
    try:
        return options[str(weights)]
    except KeyError:
        known = ", ".join(["DEFAULT", *(w.name for w in options)])
        raise FinetuneError(
            f"model.weights={weights} is not a torchvision weight of {name}; use one of {known} "
            "or null"
        ) from None


def hub_state_dict(name: str, weights: Any, mode: str) -> tuple[dict | None, str]:
    """(state dict, source) from the torch.hub cache or download.pytorch.org, or (None, why)."""
    if weights is None:
        if mode == "true":
            raise FinetuneError(
                f"torchvision: model.pretrained=true but model.weights is null for {name}; set "
                "model.weights=DEFAULT (or IMAGENET1K_V1, ...) or model.pretrained=PATH"
            )
        return None, "random init (model.weights=null)"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if cached.is_file():
        return load_state_dict_file(cached), f"hub-cache:{cached}"
    reason = hub_unreachable_reason(urlparse(weights.url).hostname)
    if reason is None:
        return weights.get_state_dict(progress=False, check_hash=True), f"hub:{weights.url}"
    if mode == "true":
        raise FinetuneError(
            f"torchvision: model.pretrained=true but {weights} is not in {cached.parent} and "
            f"{reason}; run once online to fill the cache, give a file with "
            "model.pretrained=PATH, or use model.pretrained=false"
        )
    return None, reason


def stages_of(model: nn.Module, head: list[str]) -> list[Stage]:
    """Stem then the blocks, from torchvision's attribute names; the rest joins the last stage."""
    children = [n for n, _ in model.named_children() if not in_head(n, head)]
    if hasattr(model, "layer1"):  # ResNet, ResNeXt, Wide ResNet
        first = children.index("layer1")
        blocks = [n for n in children[first:] if n.startswith("layer")]
        stages = [Stage(with_parameters(model, children[:first]))]
        stages += [Stage([n]) for n in blocks]
    elif isinstance(getattr(model, "features", None), nn.Sequential):  # MobileNet, ConvNeXt, ...
        stages = [Stage([f"features.{i}"]) for i in range(len(model.features))]
    elif hasattr(model, "encoder") and hasattr(model.encoder, "layers"):  # ViT
        stem = with_parameters(model, ["conv_proj"])
        direct = [n for n, _ in model.named_parameters(recurse=False)]
        stages = [Stage(stem, [*direct, "encoder.pos_embedding"])]
        stages += [Stage([f"encoder.layers.{n}"]) for n, _ in model.encoder.layers.named_children()]
    else:
        stages = [Stage([n]) for n in with_parameters(model, children)]
    stages = [Stage([m for m in s.modules if not in_head(m, head)], s.parameters) for s in stages]
    return complete_stages(model, stages, head)


def preprocessing(weights: Any) -> dict[str, Any]:
    """Resize, crop, mean, std and interpolation of the weights' own eval transform."""
    if weights is None:
        return {**IMAGENET, "interpolation": "bilinear", "resize_size": 256, "crop_size": 224}
    transform = weights.transforms()
    return {
        "mean": list(transform.mean),
        "std": list(transform.std),
        "interpolation": transform.interpolation.value,
        "resize_size": transform.resize_size[0],
        "crop_size": transform.crop_size[0],
    }


def save_native(
    model: nn.Module, info: ModelInfo, run_dir: Path, checkpoints: Path, classes: list[str]
) -> None:
    """torchvision has no folder format of its own: checkpoints/model.safetensors is the one."""
