"""What every model source (timm, torchvision, hf) hands the engine, and their shared rules.

A source is a module with `build(cfg, num_outputs) -> (model, ModelInfo)`. ModelInfo is the one
place that knows where the model's head is, its stages from stem to top (for freezing) and the
preprocessing its weights expect; freeze.py, features.py, lora.py and evaluation.py ask it
rather than guess. `model.pretrained` means the same for every source:

  auto   the source's pretrained weights when cached or reachable; else random init, warned
  true   the source's pretrained weights, or one line saying how to get them
  false  random init
  PATH   a weights file (.safetensors/.pt/.pth/.bin, this project's checkpoints too) or an
         earlier run directory (its checkpoints/best.pt)
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune.models.weights import run_or_file

HUB_PROBE_TIMEOUT_S = 3.0


@dataclass
class Stage:
    """One stage of a backbone: module names, and parameters not held by those modules."""

    modules: list[str]
    parameters: list[str] = field(default_factory=list)


@dataclass
class ModelInfo:
    """What was built, for the run's records and for everything that needs the head or stages."""

    name: str
    num_classes: int
    pretrained_source: str  # what was actually loaded, e.g. "hub-cache:timm/resnet18.a1_in1k"
    pretrained_loaded: bool  # False means the backbone is randomly initialised
    notes: list[str]
    source: str = "timm"
    head: list[str] = field(default_factory=list)  # module name(s) of the classifier
    preprocessing: dict[str, Any] = field(default_factory=dict)  # mean, std, interpolation, ...
    stages: list[Stage] = field(default_factory=list, repr=False)  # stem first, head left out

    def record(self) -> dict[str, Any]:
        """For hparams.yaml: everything but the (long) stage lists."""
        record = asdict(self)
        record["stages"] = len(self.stages)
        return record


def normalise_pretrained(value: Any) -> str:
    """'auto', 'true', 'false' or a path; YAML booleans become strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "false"
    text = str(value)
    return text.lower() if text.lower() in ("auto", "true", "false") else text


def weights_path(path_text: str) -> Path:
    """A weights file, or an earlier run directory's best checkpoint."""
    return run_or_file(
        path_text, "model.pretrained", "a .safetensors/.pt/.pth file, or use model.pretrained=false"
    )


def hub_unreachable_reason(host: str | None = None) -> str | None:
    """Why a weights server cannot be used now, or None when it answers.

    One TCP connect with a short timeout, in a thread so that a hanging DNS lookup cannot
    stall the run (huggingface_hub's own retries spend ~46 s offline before they fail).
    Without `host`, the Hugging Face hub (HF_ENDPOINT), which HF_HUB_OFFLINE switches off.
    """
    if host is None:
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
            result.append(f"{host} is unreachable: {error}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S + 0.5)
    return result[0] if result else f"{host} did not answer in {HUB_PROBE_TIMEOUT_S}s"
