"""The segmentation_models.pytorch source: `model=unet|fpn|deeplabv3plus` over any smp encoder.

    python train.py task=segmentation model=unet model.encoder_weights=imagenet
    python train.py task=segmentation model=fpn model.encoder=tu-convnext_atto   # any timm encoder

`model.name` is the smp architecture, `model.encoder` its encoder (smp's own, or timm's with
`tu-`). `model.pretrained` means what it means for every source (models/source.py):

  auto   `model.encoder_weights` (e.g. imagenet) when smp can load them; else random, warned
  true   `model.encoder_weights`, or one line saying why they cannot be had
  false  random init (encoder_weights ignored)
  PATH   a file or run directory: a segmentation run's weights load whole; a classification
         run's backbone loads into the encoder (transfer across tasks), its head left out

The head is the decoder and the segmentation head: `freeze=backbone` freezes the encoder.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from finetune.models.heads import complete_stages
from finetune.models.source import ModelInfo, Stage, normalise_pretrained, weights_path
from finetune.models.weights import load_into, load_state_dict_file
from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)

HEAD = ["decoder", "segmentation_head"]
# smp's encoders expect ImageNet statistics (its own preprocessing params, for every encoder).
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def build(cfg: DictConfig, num_outputs: int) -> tuple[nn.Module, ModelInfo]:
    """`cfg.name` over `cfg.encoder` with `num_outputs` classes and the weights asked for."""
    mode = normalise_pretrained(cfg.pretrained)
    kwargs = OmegaConf.to_container(cfg.kwargs, resolve=True)
    notes: list[str] = []
    if mode in ("auto", "true") and cfg.encoder_weights:
        model, source, loaded, notes = with_encoder_weights(cfg, num_outputs, kwargs, mode)
    else:
        if mode == "true":
            raise FinetuneError(
                "model.pretrained=true but model.encoder_weights is null; set "
                "model.encoder_weights=imagenet, give a file with model.pretrained=PATH, or use "
                "model.pretrained=false"
            )
        model = create(cfg, num_outputs, None, kwargs)
        source, loaded = "random init", False
        if mode not in ("auto", "false"):
            path = weights_path(mode)
            notes = load_weights(model, load_state_dict_file(path), str(path))
            source, loaded = f"file:{path.resolve()}", True
    info = ModelInfo(cfg.name, num_outputs, source, loaded, notes, "smp", list(HEAD))
    info.preprocessing = {**IMAGENET, "interpolation": "bilinear"}
    info.stages = stages_of(model)
    return model, info


def create(
    cfg: DictConfig, num_outputs: int, encoder_weights: str | None, kwargs: dict[str, Any]
) -> nn.Module:
    import segmentation_models_pytorch as smp

    try:
        model = smp.create_model(
            cfg.name,
            encoder_name=cfg.encoder,
            encoder_weights=encoder_weights,
            in_channels=3,
            classes=num_outputs,
            **kwargs,
        )
    except KeyError as error:  # smp names the unknown architecture or encoder in a KeyError
        raise FinetuneError(
            f"model.name={cfg.name} model.encoder={cfg.encoder}: {error.args[0]}"
        ) from None
    drop_unused_stages(model.encoder)
    return model


def drop_unused_stages(encoder: nn.Module) -> None:
    """Replace the encoder stages below `encoder_depth` by Identity.

    smp's own encoders keep every stage whatever the depth (resnet18 at depth 3 keeps layer3
    and layer4, 84% of its weights) and skip the deep ones in forward. Such weights never get
    a gradient: DDP stops at the second step waiting for theirs, checkpoints carry them, and
    gradual thawing would spend epochs on them. Stages come from smp's get_stages (output
    stride: modules); timm's (`tu-`) encoders build only the stages they use.
    """
    depth = getattr(encoder, "_depth", None)
    try:
        by_stride = encoder.get_stages()
    except (AttributeError, NotImplementedError):
        return
    unused = [m for stride, modules in by_stride.items() if stride > 2**depth for m in modules]
    for name, module in list(encoder.named_modules()):
        if any(module is u for u in unused):
            parent, _, attribute = name.rpartition(".")
            setattr(encoder.get_submodule(parent), attribute, nn.Identity())


def with_encoder_weights(
    cfg: DictConfig, num_outputs: int, kwargs: dict[str, Any], mode: str
) -> tuple[nn.Module, str, bool, list[str]]:
    """smp's pretrained encoder (from its cache or the hub); auto falls back to random init."""
    try:
        model = create(cfg, num_outputs, cfg.encoder_weights, kwargs)
    except FinetuneError:
        raise
    except Exception as error:  # smp and huggingface_hub raise many kinds when offline
        if mode == "true":
            raise FinetuneError(
                f"smp: model.pretrained=true but the {cfg.encoder_weights} weights of "
                f"{cfg.encoder} could not be loaded ({type(error).__name__}); run once online "
                "to fill the cache, or use model.pretrained=false"
            ) from None
        message = (
            f"no {cfg.encoder_weights} weights for {cfg.encoder} ({type(error).__name__}): "
            "training from random init"
        )
        log.warning(message)
        return create(cfg, num_outputs, None, kwargs), "random init (auto)", False, [message]
    return model, f"smp:{cfg.encoder}/{cfg.encoder_weights}", True, []


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> list[str]:
    """A segmentation model's weights whole, or a classifier's backbone into the encoder.

    A classification run of this project saves a timm (or torchvision) model whose backbone
    keys (conv1, layer1, ...) are the encoder's: smp's own ResNet encoders use torchvision's
    names, and a `tu-` encoder wraps the timm model itself (`encoder.model`).
    """
    if any(key.startswith("encoder.") for key in state_dict):
        return load_into(model, state_dict, source, ["segmentation_head"])
    encoder = encoder_body(model)
    own = encoder.state_dict()
    fitting = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fitting and not k.endswith("num_batches_tracked")]
    if not fitting or missing:
        raise FinetuneError(
            f"weights in {source} fit neither this segmentation model nor its encoder "
            f"(missing {missing[:4]}); give a run with the same backbone as model.encoder"
        )
    encoder.load_state_dict(fitting, strict=False)
    left = sorted({k.split(".")[0] for k in state_dict if k not in fitting})
    note = f"encoder loaded from a classifier's backbone ({len(fitting)} tensors; left out: {left})"
    log.info(note)
    return [note]


def encoder_body(model: nn.Module) -> nn.Module:
    """The module holding the encoder's weights under the backbone's own names."""
    encoder = model.encoder
    return getattr(encoder, "model", encoder)  # timm's universal encoder wraps `model`


def stages_of(model: nn.Module) -> list[Stage]:
    """The encoder's children from stem to top (the decoder and segmentation head are the head)."""
    body = encoder_body(model)
    prefix = "encoder.model" if body is not model.encoder else "encoder"
    children = [(n, c) for n, c in body.named_children() if next(c.parameters(), None) is not None]
    # The stem (conv1, bn1, ...: layers, not blocks of layers) is one stage, as timm has it.
    stem = next((i for i, (_, c) in enumerate(children) if holds_blocks(c)), 0)
    groups = [children[:stem]] if stem else []
    groups += [[pair] for pair in children[stem:]]
    stages = [Stage([f"{prefix}.{n}" for n, _ in group]) for group in groups]
    return complete_stages(model, stages, HEAD)


def holds_blocks(module: nn.Module) -> bool:
    """A stage (layer1, stages_0) holds blocks, which hold layers; a stem holds layers only."""
    return any(next(child.children(), None) is not None for child in module.children())


def loader_options() -> set[str]:
    """smp.create_model's own options: which weights is model.encoder_weights' to say."""
    import segmentation_models_pytorch as smp

    return set(inspect.signature(smp.create_model).parameters) - {"kwargs"}


def save_native(
    model: nn.Module, info: ModelInfo, run_dir: Path, checkpoints: Path, classes: list[str]
) -> None:
    """smp rebuilds from (model.name, model.encoder, classes) in the run's config:
    checkpoints/model.safetensors is the state dict it loads."""
