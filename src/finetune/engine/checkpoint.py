"""Checkpoints: the classic PyTorch dict, written atomically, with last/best/top-k files.

A checkpoint opens with `torch.load(path, weights_only=True)`: tensors, numbers, strings,
lists and dicts only. Every file is written to a temporary name in the same directory,
fsynced, then renamed over the old one, so a crash at any instant leaves the previous file
whole.

A save is crash-safe as a whole, not only file by file: last.pt is the commit. It is written
first and names the best and top-k files of the new state; model.safetensors, best.pt and the
top-k file follow, and evicted files go last. A kill in between leaves last.pt naming files
that are one step behind, and a resume finishes the save from last.pt itself (the same
bytes) before anything else is written (engine/checkpointer.py). Paths inside a checkpoint are
file names in its own folder, so a copied or moved run directory never touches the original's.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from finetune.models.weights import strip_wrapper_prefixes
from finetune.safety.atomic import atomic_write, atomic_write_named
from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)

# Test hook, never set in normal use: `FINETUNE_TEST_KILL_AT=<point>:<epoch>` makes the process
# SIGKILL itself at that point of that epoch's save (see KILL_POINTS), so tests can prove that a
# crash between the writes of a save leaves a run that resumes correctly.
KILL_AT_ENV = "FINETUNE_TEST_KILL_AT"
KILL_POINTS = ("before_last", "after_last", "after_safetensors", "after_best", "after_top_k")
TOP_K_PREFIX = "epoch="


def save_torch(obj: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


def kill_point(point: str, epoch: int) -> None:
    """The test hook (KILL_AT_ENV): SIGKILL this process here when the variable names it."""
    if os.environ.get(KILL_AT_ENV) == f"{point}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


def local_name(stored: str) -> str:
    """A file name inside the checkpoint folder, from a path read back from a checkpoint.

    Checkpoints store bare names. Whatever a file says, only its last part is used, in this
    folder: nothing read back can reach outside it.
    """
    name = Path(str(stored)).name
    if name in ("", ".", ".."):
        raise FinetuneError(f"a checkpoint names the file {stored!r}; expected a file name")
    return name


def saved_epoch(path: Path) -> int | None:
    """The epoch a checkpoint file holds (memory-mapped, nothing else read); None if unreadable."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # missing, damaged or not ours: no epoch
        return None


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def rng_state() -> dict[str, Any]:
    """Every random generator's state, as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": list_to_plain(random.getstate()),
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def list_to_plain(value: Any) -> Any:
    """Tuples to lists, recursively (random.getstate() is nested tuples)."""
    if isinstance(value, (list, tuple)):
        return [list_to_plain(v) for v in value]
    return value


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["key"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        set_cuda_rng_states(state["cuda"])


def set_cuda_rng_states(states: list[torch.Tensor]) -> None:
    """Each visible GPU's generator from the saved ones, as many as both sides have.

    A run saved with more (or fewer) GPUs than this process sees is resumed all the same: the
    first GPUs get their states back, and a warning says the random streams cannot all match.
    """
    visible = torch.cuda.device_count()
    if len(states) != visible:
        log.warning(
            "the checkpoint holds the CUDA random state of %d GPU(s) and this process sees %d: "
            "restored %d; random draws on the GPU (dropout) will not repeat the saved run's",
            len(states),
            visible,
            min(len(states), visible),
        )
    for index, saved in enumerate(states[:visible]):
        torch.cuda.set_rng_state(saved, index)


def save_safetensors(
    weights: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]
) -> None:
    """The weights alone, for sharing; metadata says which model and classes."""
    state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    atomic_write_named(path, lambda tmp: write_safetensors(state, tmp, metadata))


def write_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors' save_file, a failed write raised as the OSError it was (safetensors words
    it in its own error, "... (os error 28)"), so that a full disk is the run's one line."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(state, str(path), metadata=metadata)
    except SafetensorError as error:
        code = re.search(r"os error (\d+)", str(error))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path)) from error


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped model's state dict, with no `module.` or `_orig_mod.` prefixes."""
    return strip_wrapper_prefixes(unwrap(model).state_dict())
