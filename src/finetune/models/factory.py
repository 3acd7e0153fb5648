"""Models: a timm backbone with a head sized for the data, and where its weights come from.

`model.pretrained` picks the source:
  auto   hub weights when they are in the local cache or the hub answers; else random init
         with a warning (recorded in hparams.yaml)
  true   hub weights, or an error that says how to get them
  false  random init
  PATH   a weights file (.safetensors, .pt, .pth, .bin; this project's checkpoints too) or an
         earlier run directory (its checkpoints/best.pt)
Nothing here waits on an unreachable network: the hub is probed once with a short timeout.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from finetune.models.weights import load_into, load_state_dict_file, run_or_file
from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


@dataclass
class ModelInfo:
    """What was built, for the run's records."""

    name: str
    num_classes: int
    pretrained_source: str  # what was actually loaded, e.g. "hub-cache:timm/resnet18.a1_in1k"
    pretrained_loaded: bool  # False means the backbone is randomly initialised
    notes: list[str]


def build_model(cfg: DictConfig, num_classes: int) -> tuple[nn.Module, ModelInfo]:
    """Create `cfg.name` with a `num_classes` head and the weights `cfg.pretrained` asks for."""
    check_model_name(cfg.name)
    extra = OmegaConf.to_container(cfg.kwargs, resolve=True)
    check_model_kwargs(extra, "model.kwargs")
    kwargs = {"num_classes": num_classes, "drop_path_rate": cfg.drop_path_rate, **extra}
    mode = normalise_pretrained(cfg.pretrained)
    if mode in ("auto", "true"):
        return build_from_hub(cfg.name, mode, kwargs)
    model = timm.create_model(cfg.name, pretrained=False, **kwargs)
    if mode == "false":
        return model, ModelInfo(cfg.name, num_classes, "random init", False, [])
    path = weights_path(mode)
    notes = load_into(model, load_state_dict_file(path), source=str(path))
    return model, ModelInfo(cfg.name, num_classes, f"file:{path.resolve()}", True, notes)


def normalise_pretrained(value: Any) -> str:
    """'auto', 'true', 'false' or a path; YAML booleans become strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "false"
    text = str(value)
    return text.lower() if text.lower() in ("auto", "true", "false") else text


def check_model_name(name: str) -> None:
    """Fail with close timm names when `name` is not one (hf-hub: names are checked by the hub)."""
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"close timm names: {', '.join(close)}" if close else "see timm.list_models()"
    raise FinetuneError(f"model.name={name} is not a timm model; {hint}")


def check_model_kwargs(kwargs: dict[str, Any], where: str) -> None:
    """model.kwargs reach the model's constructor, never timm.create_model's own options.

    Those options (checkpoint_path, pretrained_cfg, pretrained_cfg_overlay, cache_dir, ...)
    make timm read weights from a file or download into a folder: which file is for
    model.pretrained to say, and a config read back from a checkpoint must not say it. The list
    is timm's own signature, so a new loading option is refused too.
    """
    import inspect

    own = set(inspect.signature(timm.create_model).parameters) - {"kwargs"}
    refused = sorted(own & set(kwargs))
    if refused:
        raise FinetuneError(
            f"{where} sets {', '.join(refused)}, an option of timm.create_model itself, not of "
            "the model; give weights with model.pretrained=PATH instead"
        )


def build_from_hub(name: str, mode: str, kwargs: dict[str, Any]) -> tuple[nn.Module, ModelInfo]:
    """Hub weights: from the local cache, else the hub if it answers, else (auto) none."""
    num_classes = kwargs["num_classes"]
    cached = cached_weights_file(name)
    if cached is not None:
        # A local file: timm loads it without asking the hub, and adapts the head as usual.
        model = timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": cached}, **kwargs
        )
        return model, ModelInfo(name, num_classes, f"hub-cache:{cached}", True, head_notes(model))
    reason = hub_unreachable_reason()
    if reason is None:
        model = timm.create_model(name, pretrained=True, **kwargs)
        source = f"hub:{model.pretrained_cfg.get('hf_hub_id') or model.pretrained_cfg.get('url')}"
        return model, ModelInfo(name, num_classes, source, True, head_notes(model))
    if mode == "true":
        raise FinetuneError(
            f"model.pretrained=true but no weights for {name} are cached and {reason}; "
            "run once online to fill the cache, give a file with model.pretrained=PATH, "
            "or use model.pretrained=false"
        )
    message = f"no pretrained weights for {name} ({reason}): training from random init"
    log.warning(message)
    model = timm.create_model(name, pretrained=False, **kwargs)
    return model, ModelInfo(
        name, num_classes, "random init (auto: weights unavailable)", False, [message]
    )


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


def hub_unreachable_reason() -> str | None:
    """Why the Hugging Face hub cannot be used now, or None when it answers.

    One TCP connect with a short timeout, in a thread so that a hanging DNS lookup cannot
    stall the run (huggingface_hub's own retries spend ~46 s offline before they fail).
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":")[0]
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT_S).close()
            result.append(None)
        except OSError as error:
            result.append(f"the hub ({host}) is unreachable: {error}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S + 0.5)
    return result[0] if result else f"the hub ({host}) did not answer in {HUB_PROBE_TIMEOUT_S}s"


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


def weights_path(path_text: str) -> Path:
    """A weights file, or an earlier run directory's best checkpoint."""
    return run_or_file(
        path_text, "model.pretrained", "a .safetensors/.pt/.pth file, or use model.pretrained=false"
    )


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total, trainable and frozen parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
