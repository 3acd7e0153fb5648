"""Mixed precision (autocast, GradScaler), channels_last and torch.compile, as timm's train.py."""

from __future__ import annotations

import contextlib
import functools
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
        from finetune.safety.errors import FinetuneError

        raise FinetuneError(f"trainer.precision={precision} must be one of 32, bf16, 16")
    dtype = DTYPES[key]
    if dtype is torch.float16 and device.type == "cpu":
        log.warning("trainer.precision=16 is not supported on CPU: using bf16 instead")
        dtype = torch.bfloat16
    if dtype is torch.bfloat16 and not native_bf16(device):
        log.warning(
            "trainer.precision=%s: this %s has no native bf16, so it is emulated and far slower "
            "than fp32 (resnet18 on an AVX2 CPU: 43x, scripts/benchmark.py); "
            "trainer.precision=32 is faster here",
            precision,
            device.type.upper(),
        )
    return dtype


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 math runs in hardware: AVX512-BF16 or AMX on CPU, Ampere or later on CUDA."""
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a build without oneDNN: no way to tell
            return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return True  # other backends: no way to tell, no warning


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 on CUDA only: bf16 and fp32 do not underflow that way."""
    if dtype is torch.float16 and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def maybe_compile(model: nn.Module, enabled: bool, device: torch.device) -> nn.Module:
    """torch.compile the model, or warn (once) and stay eager where compile cannot work."""
    if not enabled:
        return model
    reason = compile_unavailable(device)
    if reason is None:
        try:
            return torch.compile(model)
        except Exception as error:  # any other reason compile is unavailable: eager still trains
            reason = str(error)
    warn_eager(reason)
    return model


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile's default backend (inductor) cannot build kernels here, or None.

    torch.compile is lazy: a missing compiler would surface at the first forward, as a long
    traceback from inside the first step. So what inductor needs is checked before anything
    trains: Dynamo support, Triton on CUDA, a C++ compiler on CPU.
    """
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "TorchDynamo is not supported on this Python or platform"
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "Triton is not installed (pip install triton)"
    elif device.type == "cpu":
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception:
            return "no C++ compiler found (install g++, or set CXX)"
    return None


@functools.cache
def warn_eager(reason: str) -> None:
    """One warning per reason: a gradual thaw compiles again, and says nothing new."""
    log.warning("trainer.compile=true but torch.compile is unavailable (%s): eager mode", reason)
