"""Mixed precision (autocast, GradScaler), channels_last and torch.compile, as timm's train.py."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

DTYPES = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def autocast_dtype(precision: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `trainer.precision`; fp16 on CPU falls back to bf16 (said once)."""
    key = str(precision)
    if key not in DTYPES:
        from finetune.errors import FinetuneError

        raise FinetuneError(f"trainer.precision={precision} must be one of 32, bf16, 16")
    dtype = DTYPES[key]
    if dtype is torch.float16 and device.type == "cpu":
        log.warning("trainer.precision=16 is not supported on CPU: using bf16 instead")
        return torch.bfloat16
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 on CUDA only: bf16 and fp32 do not underflow that way."""
    if dtype is torch.float16 and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile the model, or warn and stay eager where compile cannot work."""
    if not enabled:
        return model
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            raise RuntimeError("TorchDynamo is not supported on this Python/platform")
        return torch.compile(model)
    except Exception as error:  # any reason compile is unavailable: eager still trains
        log.warning("trainer.compile=true but torch.compile is unavailable (%s): eager mode", error)
        return model
