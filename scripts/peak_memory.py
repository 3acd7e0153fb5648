"""Peak memory of a benchmark variant's training steps, on a GPU and on a CPU (Linux).

CUDA's allocator keeps its own peak. On a CPU there is none, so `peak_memory_mib` pieces the
same quantity together from the tensors a variant keeps between steps and the rise of the
process's peak resident memory (the kernel's high-water mark, which /proc lets us reset).
`setup` is benchmark.py's Setup (net, stepper, loader); `variant.loop(setup, steps)` runs steps.
"""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from typing import Any

import torch


def peak_memory_mib(variant: Any, setup: Any, steps: int) -> float:
    """Peak memory of `steps` steps in MiB: CUDA's allocator peak on a GPU. On the CPU (Linux),
    the same quantity pieced together: the variant's tensors that stay (parameters, gradients,
    optimizer state, EMA) plus how far the process's peak resident memory rose during the
    steps (the kernel's high-water mark, reset through /proc: activations and temporaries).
    NaN where neither can be asked."""
    device = setup.stepper.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        variant.loop(setup, steps)
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    except OSError:
        return float("nan")
    trim_heap()
    before = resident_kib("VmRSS")
    variant.loop(setup, steps)
    return (resident_kib("VmHWM") - before) / 1024 + held_tensor_bytes(setup) / 2**20


def held_tensor_bytes(setup: Any) -> int:
    """Bytes of the tensors a variant keeps between steps: its model's parameters and
    buffers, their gradients, the optimizer's state and the EMA copy."""
    tensors = {id(t): t for t in setup.net.parameters()}
    tensors.update({id(t): t for t in setup.net.buffers()})
    tensors.update({id(p.grad): p.grad for p in setup.net.parameters() if p.grad is not None})
    for state in setup.stepper.optimizer.state.values():
        tensors.update({id(v): v for v in state.values() if isinstance(v, torch.Tensor)})
    if setup.stepper.ema is not None:
        tensors.update({id(t): t for t in setup.stepper.ema.module.state_dict().values()})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def trim_heap() -> None:
    """Give the heap's free memory back to the kernel (glibc), so that what the steps reuse
    from an earlier variant's frees counts as theirs."""
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def resident_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
