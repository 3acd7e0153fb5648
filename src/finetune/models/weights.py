"""Reading weights from files safely, and loading them into a model with a clear report.

Files are opened without unpickling code (`weights_only=True`, or safetensors), so a weights
file from the internet cannot run anything.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from finetune.safety.errors import FinetuneError, one_line

log = logging.getLogger(__name__)

# Prefixes that wrappers add to parameter names: DDP, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def run_or_file(target: str, key: str, fix: str) -> Path:
    """A weights/checkpoint file, or a run directory's checkpoints/best.pt; `key` names the option.

    model.pretrained=, eval.py's ckpt= and load_model() all accept either form.
    """
    path = Path(target).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
        if not path.is_file():
            raise FinetuneError(
                f"{key}={target} is a directory without checkpoints/best.pt; "
                f"give a finished run directory or {fix}"
            )
    if not path.is_file():
        raise FinetuneError(f"{key}={target}: no such file or run directory; give {fix}")
    return path


# The prefix of the EMA weights' validation metrics (engine/run.py: validate), in one place.
EMA_PREFIX = "val_ema/"


def monitored_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The weights a checkpoint of this project was judged by: its EMA's when the run picked
    its best by them (`monitor=val_ema/...`), else the trained weights.

    best.pt is best by the monitor's score, so the test, model.safetensors, eval.py, predict.py
    and a later run's model.pretrained must use the weights that earned it; a resume loads both
    sets as they were (engine/state.py). The config is read as data, a string compared.
    """
    config = checkpoint.get("config")
    monitor = config.get("monitor") if isinstance(config, dict) else None
    ema = checkpoint.get("ema_state_dict")
    if isinstance(monitor, str) and monitor.startswith(EMA_PREFIX) and isinstance(ema, dict):
        return ema
    return checkpoint["model_state_dict"]


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A model state dict from .safetensors, or from a .pt/.pth/.bin (plain or a checkpoint)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise FinetuneError(f"{path} is not a readable safetensors file: {error}") from None
    obj = safe_torch_load(path)
    scaling = lora_scaling(obj)
    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
        obj = monitored_weights(obj)  # the classic recipe's key (this project's checkpoints)
    elif isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FinetuneError(f"{path} holds no state dict of tensors")
    state_dict = strip_wrapper_prefixes(obj)
    if scaling is not None:  # a freeze=lora run of this project: its adapters folded in
        state_dict = fold_lora(state_dict, scaling)
    return state_dict


def lora_scaling(checkpoint: object) -> float | None:
    """alpha / rank of a freeze=lora run's checkpoint (numbers read as data); else None."""
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    freeze = config.get("freeze") if isinstance(config, dict) else None
    if not isinstance(freeze, dict) or freeze.get("policy") != "lora":
        return None
    rank, alpha = freeze.get("rank"), freeze.get("alpha")
    if not (isinstance(rank, int) and rank > 0 and isinstance(alpha, (int, float))):
        raise FinetuneError("a freeze=lora checkpoint without a positive freeze.rank and alpha")
    return alpha / rank


def safe_torch_load(path: Path) -> object:
    """torch.load that refuses pickled code and names the file when it is damaged."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise FinetuneError(
            f"{path} holds pickled objects other than tensors and plain data; refused for "
            f"safety (nothing in it was run): {str(error).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise FinetuneError(
            f"{path} is incomplete or corrupted ({one_line(error)}); {whole_neighbour(path)}"
        ) from None


def whole_neighbour(path: Path) -> str:
    """Name the newest checkpoint beside `path` that loads, so the user knows what is safe."""
    candidates = sorted(path.parent.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        if candidate == path:
            continue
        try:
            torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception:  # any damage: keep looking
            continue
        return f"{candidate} is whole"
    return "no other checkpoint beside it is whole"


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP's `module.` and torch.compile's `_orig_mod.` from every key."""
    cleaned = {}
    for key, value in state_dict.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        cleaned[key] = value
    return cleaned


def load_into(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, head: list[str]
) -> list[str]:
    """Load weights into `model`, replacing a classifier head (module names `head`) of another size.

    Returns notes for the run's records. Any other mismatch is an error that lists the keys:
    silently half-loaded weights are a wasted run.
    """
    head = tuple(f"{name}." for name in head)
    own = model.state_dict()
    dropped = [
        key
        for key, value in state_dict.items()
        if key in own and own[key].shape != value.shape and key.startswith(head)
    ]
    filtered = {key: value for key, value in state_dict.items() if key not in dropped}
    wrong_shape = [
        f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
        for key, value in filtered.items()
        if key in own and own[key].shape != value.shape
    ]
    missing = [key for key in own if key not in filtered and key not in dropped]
    missing = [key for key in missing if not key.startswith(head) or key in state_dict]
    # A frozen run's BatchNorm (FrozenBatchNorm2d) saves no counter; the fresh one starts at 0.
    missing = [key for key in missing if not key.endswith("num_batches_tracked")]
    unexpected = [key for key in filtered if key not in own]
    problems = [("shape mismatch", wrong_shape), ("missing", missing), ("unexpected", unexpected)]
    problems = [(kind, keys) for kind, keys in problems if keys]
    if problems:
        detail = "; ".join(
            f"{kind}: {', '.join(keys[:6])}" + (" ..." if len(keys) > 6 else "")
            for kind, keys in problems
        )
        raise FinetuneError(
            f"weights in {source} do not fit {type(model).__name__} ({detail}); "
            "check model.name and the file"
        )
    model.load_state_dict(filtered, strict=False)
    notes = []
    if dropped:
        note = f"head of another size replaced (random init): {', '.join(dropped)}"
        log.info(note)
        notes.append(note)
    return notes


def load_exact(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every weight, or fail listing the keys that do not fit.

    Only BatchNorm's `num_batches_tracked` counters may be missing: a frozen BatchNorm layer
    (timm's FrozenBatchNorm2d) has none, so a checkpoint of a frozen run lacks them.
    """
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise FinetuneError(
            f"{source} does not fit {type(model).__name__}: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}; check model.name and the number of classes"
        )


def fold_lora(state_dict: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """A LoRA run's state dict as the plain model's: W + scaling * B @ A for each adapted layer.

    peft keeps an adapted Linear's own weights under `<layer>.base_layer.` beside its
    `<layer>.lora_A.default.weight` and `lora_B`; the plain model names them `<layer>.`.
    `scaling` is the run's freeze.alpha / freeze.rank. Tensors only: no peft, no code.
    """
    folded = {}
    for key, value in state_dict.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        layer, found, name = key.partition(".base_layer.")
        if found:
            down = state_dict.get(f"{layer}.lora_A.default.weight")
            up = state_dict.get(f"{layer}.lora_B.default.weight")
            if name == "weight" and down is not None and up is not None:
                value = value + (scaling * (up.double() @ down.double())).to(value.dtype)
            key = f"{layer}.{name}"
        folded[key] = value
    return folded
