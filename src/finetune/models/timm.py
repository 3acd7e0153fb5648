"""The timm source: any timm name (`model.name=resnet18`, `hf-hub:timm/...`), head and stages
from timm's own registry (pretrained_cfg's classifier, the coarse group_matcher).

Hub weights come from the local cache, or the hub when it answers; nothing here waits on an
unreachable network (the hub is probed once with a short timeout).
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from timm.models import group_modules, group_parameters
from torch import nn

from finetune.models.heads import complete_stages, in_head
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

HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def build(cfg: DictConfig, num_outputs: int) -> tuple[nn.Module, ModelInfo]:
    """Create `cfg.name` with a `num_outputs` head and the weights `cfg.pretrained` asks for."""
    check_model_name(cfg.name)
    check_hub_config(cfg.name)
    kwargs = {"num_classes": num_outputs, "drop_path_rate": cfg.drop_path_rate}
    kwargs.update(OmegaConf.to_container(cfg.kwargs, resolve=True))
    mode = normalise_pretrained(cfg.pretrained)
    if mode in ("auto", "true"):
        model, source, loaded, notes = from_hub(cfg.name, mode, kwargs)
    else:
        model = timm.create_model(cfg.name, pretrained=False, **kwargs)
        source, loaded, notes = "random init", False, []
        if mode != "false":
            path = weights_path(mode)
            notes = load_into(model, load_state_dict_file(path), str(path), head_of(model))
            source, loaded = f"file:{path.resolve()}", True
    head = [cfg.head] if cfg.head else head_of(model)
    info = ModelInfo(cfg.name, num_outputs, source, loaded, notes, "timm", head)
    info.preprocessing = preprocessing(model)
    info.stages = stages_of(model, info.head)
    return model, info


def loader_options() -> set[str]:
    """timm.create_model's own options (checkpoint_path, pretrained_cfg_overlay, cache_dir, ...):
    they load files, so model.kwargs may not set them (models/factory.py)."""
    import inspect

    return set(inspect.signature(timm.create_model).parameters) - {"kwargs", "model_name"}


def check_model_name(name: str) -> None:
    """Fail with close timm names when `name` is not one (hf-hub: names are checked by the hub)."""
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"close timm names: {', '.join(close)}" if close else "see timm.list_models()"
    raise FinetuneError(f"model.name={name} is not a timm model; {hint}")


def check_hub_config(name: str) -> None:
    """An hf-hub: name says nothing of its architecture until the repo's config.json is read,
    even for random init: offline, that file must be in the cache (else timm fails deep in
    huggingface_hub, after a warning that it would train from random init)."""
    if not name.startswith(("hf-hub:", "hf_hub:")):
        return
    from huggingface_hub import try_to_load_from_cache

    repo_id = name.split(":", 1)[1]
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    reason = hub_unreachable_reason()
    if reason is None:
        return
    architecture = repo_id.split("/")[-1].split(".")[0]  # timm/<architecture>.<pretrained tag>
    fix = (
        f"model.name={architecture} (the same architecture from timm's registry)"
        if timm.is_model(architecture)
        else "a timm architecture name (timm.list_models())"
    )
    raise FinetuneError(
        f"model.name={name}: its config.json is not cached and {reason}; run once online, "
        f"or use {fix} with model.pretrained=PATH for weights"
    )


def from_hub(
    name: str, mode: str, kwargs: dict[str, Any]
) -> tuple[nn.Module, str, bool, list[str]]:
    """Hub weights: from the local cache, else the hub if it answers, else (auto) none."""
    cached = cached_weights_file(name)
    if cached is not None:
        # A local file: timm loads it without asking the hub, and adapts the head as usual.
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs
        )
        return model, f"hub-cache:{cached}", True, head_notes(model)
    reason = hub_unreachable_reason()
    if reason is None:
        model = timm.create_model(name, pretrained=True, **kwargs)
        source = f"hub:{model.pretrained_cfg.get('hf_hub_id') or model.pretrained_cfg.get('url')}"
        return model, source, True, head_notes(model)
    if mode == "true":
        raise FinetuneError(
            f"timm: model.pretrained=true but no weights for {name} are cached and {reason}; "
            "run once online to fill the cache, give a file with model.pretrained=PATH, "
            "or use model.pretrained=false"
        )
    message = f"no pretrained weights for {name} ({reason}): training from random init"
    log.warning(message)
    model = timm.create_model(name, pretrained=False, **kwargs)
    return model, "random init (auto: weights unavailable)", False, [message]


def cached_weights_file(name: str) -> str | None:
    """Path of `name`'s pretrained weights in the Hugging Face or torch.hub cache, if there."""
    if name.startswith(("hf-hub:", "hf_hub:")):
        repo_id = name.split(":", 1)[1]
    else:
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
        if pretrained_cfg is None:
            return None
        if pretrained_cfg.file:
            return pretrained_cfg.file
        repo_id = pretrained_cfg.hf_hub_id
        if not repo_id and pretrained_cfg.url:
            path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(pretrained_cfg.url)
            return str(path) if path.is_file() else None
    if not repo_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in HUB_WEIGHT_FILES:
        path = try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str):
            return path
    return None


def head_notes(model: nn.Module) -> list[str]:
    """Say that the pretrained classifier was replaced when the class count differs."""
    pretrained_classes = model.pretrained_cfg.get("num_classes")
    if pretrained_classes and pretrained_classes != model.num_classes:
        note = (
            f"classifier {model.pretrained_cfg.get('classifier')} replaced: "
            f"{pretrained_classes} -> {model.num_classes} classes (new head is random)"
        )
        log.info(note)
        return [note]
    return []


def head_of(model: nn.Module) -> list[str]:
    """The classifier module name(s), from timm's pretrained config."""
    classifier = model.pretrained_cfg.get("classifier") or "fc"
    return list(classifier) if isinstance(classifier, (list, tuple)) else [classifier]


def stages_of(model: nn.Module, head: list[str]) -> list[Stage]:
    """The model's stages from stem to top (timm's coarse group_matcher), the head left out."""
    matcher = model.group_matcher(coarse=True)
    module_groups = group_modules(model, matcher)
    param_groups = group_parameters(model, matcher)
    modules = dict(model.named_modules())
    stages = []
    for group_id in sorted(module_groups):
        names = [n for n in module_groups[group_id] if not in_head(n, head) and n in modules]
        direct = [n for n in param_groups[group_id] if not in_head(n, head) and "." not in n]
        stages.append(Stage(names, direct))
    return complete_stages(model, stages, head)


def preprocessing(model: nn.Module) -> dict[str, Any]:
    """Mean, std, interpolation (and timm's input size and crop) of the pretrained config."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    return {
        "mean": list(config["mean"]),
        "std": list(config["std"]),
        "interpolation": config["interpolation"],
        "native_size": list(config["input_size"][1:]),
        "crop_pct": config["crop_pct"],
    }


def save_native(
    model: nn.Module, info: ModelInfo, run_dir: Path, checkpoints: Path, classes: list[str]
) -> None:
    """checkpoints/config.json beside model.safetensors: timm.create_model('local-dir:...')."""
    from timm.models._hub import save_config_for_hf

    config = {"label_names": classes}
    save_config_for_hf(model, str(checkpoints / "config.json"), model_config=config)
