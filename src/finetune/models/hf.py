"""The HuggingFace source: `model.source=hf model.name=google/vit-base-patch16-224` (a hub id) or
a local `save_pretrained` folder, through transformers' AutoModelForImageClassification.

The classifier is replaced for the run's classes; preprocessing comes from the checkpoint's
image processor config (size, mean, std, resample). The model is wrapped so that it returns
logits, as every other source's model does; `<run>/hf` gets the best weights back in
transformers' own format (`from_pretrained(<run>/hf)`, with id2label).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from finetune.models.heads import complete_stages, find_head
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
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
BLOCK_LISTS = ("layer", "layers", "stages", "block", "blocks")


class LogitsModel(nn.Module):
    """A transformers image classifier that returns its logits tensor (for loss, export, DDP)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def loader_options() -> set[str]:
    """from_pretrained's own options: where files come from and whether a repository's code runs
    (trust_remote_code); model.kwargs may set only the model's config."""
    import inspect

    from transformers import PreTrainedModel

    own = set(inspect.signature(PreTrainedModel.from_pretrained).parameters)
    return (own - {"cls", "args", "kwargs", "model_args"}) | {
        "trust_remote_code",
        "code_revision",
        "revision",
        "token",
        "cache_dir",
        "local_files_only",
        "force_download",
        "proxies",
        "subfolder",
        "use_safetensors",
    }


def build(cfg: DictConfig, num_outputs: int) -> tuple[nn.Module, ModelInfo]:
    """`cfg.name` (hub id or folder) with a `num_outputs` classifier and the asked-for weights."""
    mode = normalise_pretrained(cfg.pretrained)
    kwargs = OmegaConf.to_container(cfg.kwargs, resolve=True)
    local = local_files_only(cfg.name, mode)
    labels = {index: str(index) for index in range(num_outputs)}  # named at save_native
    sized = {"num_labels": num_outputs, "id2label": labels, **kwargs}
    sized["label2id"] = {name: index for index, name in labels.items()}
    source, loaded, notes = "random init", False, []
    if mode in ("auto", "true"):
        from transformers import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(
            cfg.name, ignore_mismatched_sizes=True, local_files_only=local, **sized
        )
        source, loaded = f"{'file' if Path(cfg.name).is_dir() else 'hub'}:{cfg.name}", True
    else:
        model = from_config(cfg.name, local, sized)
        if mode != "false":
            path = weights_path(mode)
            wrapped_keys = LogitsModel(model)
            head = find_head(wrapped_keys, num_outputs, cfg.head, cfg.name)
            notes = load_into(wrapped_keys, load_state_dict_file(path), str(path), head)
            source, loaded = f"file:{path.resolve()}", True
    wrapped = LogitsModel(model)
    head = find_head(wrapped, num_outputs, cfg.head, cfg.name)
    info = ModelInfo(cfg.name, num_outputs, source, loaded, notes, "hf", head)
    info.preprocessing = preprocessing(cfg.name, local)
    info.stages = stages_of(wrapped, head)
    return wrapped, info


def from_config(name: str, local: bool, sized: dict[str, Any]) -> nn.Module:
    """A randomly initialised model of `name`'s architecture."""
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(name, local_files_only=local, **sized)
    return AutoModelForImageClassification.from_config(config)


def local_files_only(name: str, mode: str) -> bool:
    """Whether transformers must stay off the network: a folder, a cached id, or no hub.

    A hub id that is neither cached nor reachable fails here, in seconds, naming the fix.
    """
    if Path(name).is_dir() or is_cached(name):
        return True
    if Path(name).exists() or name.count("/") > 1 or name.startswith((".", "/", "~")):
        raise FinetuneError(
            f"hf: model.name={name} is not a save_pretrained folder (no such directory); "
            "give a folder with config.json or a hub id such as google/vit-base-patch16-224"
        )
    reason = hub_unreachable_reason()
    if reason is None:
        return False
    close = difflib.get_close_matches(name, cached_repo_ids(), n=5, cutoff=0.6)
    hint = f"; close cached names: {', '.join(close)}" if close else ""
    raise FinetuneError(
        f"hf: {name} is not in the local HuggingFace cache and {reason}; run once online to "
        "fill the cache, or give a local save_pretrained folder as model.name (weights from a "
        f"file: model.pretrained=PATH){hint}"
    )


def is_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def cached_repo_ids() -> list[str]:
    from huggingface_hub import scan_cache_dir

    try:
        return [repo.repo_id for repo in scan_cache_dir().repos]
    except Exception:  # no cache directory yet: nothing to suggest
        return []


def stages_of(model: LogitsModel, head: list[str]) -> list[Stage]:
    """Embeddings, then each block of the encoder (layer.N, layers.N, stages.N, ...).

    What no stage holds (a final layernorm, a pooler) joins the last stage.
    """
    prefix = f"model.{model.model.base_model_prefix}"
    base = model.get_submodule(prefix)
    stem = [f"{prefix}.{n}" for n in ("embeddings", "embedder") if hasattr(base, n)]
    stages = [Stage(stem[:1])]
    for holder in (prefix, f"{prefix}.encoder"):
        container = (
            model.get_submodule(holder) if holder == prefix or hasattr(base, "encoder") else None
        )
        for attribute in BLOCK_LISTS:
            blocks = getattr(container, attribute, None)
            if isinstance(blocks, nn.ModuleList):
                stages += [Stage([f"{holder}.{attribute}.{i}"]) for i in range(len(blocks))]
                return complete_stages(model, stages, head)
    children = [f"{prefix}.{n}" for n, _ in base.named_children()]
    stages += [Stage([n]) for n in children if n not in stem]
    return complete_stages(model, stages, head)


def preprocessing(name: str, local: bool) -> dict[str, Any]:
    """Size, mean, std and resample of the checkpoint's image processor; ImageNet's without one."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(name, local_files_only=local)
    except (OSError, ValueError):  # a config without preprocessor_config.json
        return {**IMAGENET, "interpolation": "bilinear", "note": "no image processor config"}
    resample = getattr(processor, "resample", 2)
    return {
        "mean": list(getattr(processor, "image_mean", None) or IMAGENET["mean"]),
        "std": list(getattr(processor, "image_std", None) or IMAGENET["std"]),
        "interpolation": PIL_RESAMPLE.get(int(resample), "bilinear"),
        "native_size": dict(getattr(processor, "size", None) or {}),
    }


def save_native(
    model: nn.Module, info: ModelInfo, run_dir: Path, checkpoints: Path, classes: list[str]
) -> None:
    """<run>/hf: save_pretrained of the weights, with id2label, for from_pretrained(<run>/hf)."""
    inner = model.model
    inner.config.id2label = dict(enumerate(classes))
    inner.config.label2id = {name: index for index, name in enumerate(classes)}
    inner.save_pretrained(str(run_dir / "hf"))
