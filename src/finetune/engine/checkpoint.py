"""Checkpoints: the classic PyTorch dict, written atomically, with last/best/top-k files.

A checkpoint opens with `torch.load(path, weights_only=True)`: tensors, numbers, strings,
lists and dicts only. Every file is written to a temporary name in the same directory,
fsynced, then renamed over the old one, so a crash at any instant leaves the previous file
whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from finetune.models.weights import strip_wrapper_prefixes
from finetune.safety.atomic import atomic_write, link_atomic
from finetune.safety.errors import FinetuneError, WriteFailed

log = logging.getLogger(__name__)


def save_torch(obj: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle))


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
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TopK:
    """The best `k` checkpoints as (score, path), best first; survives a resume via the dict."""

    k: int
    mode: str
    entries: list[tuple[float, str]] = field(default_factory=list)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def admits(self, score: float) -> bool:
        return self.k > 0 and (
            len(self.entries) < self.k or self.better(score, self.entries[-1][0])
        )

    def add(self, score: float, path: str) -> list[str]:
        """Insert an entry; return the paths that fell out of the top k."""
        self.entries.append((score, path))
        self.entries.sort(key=lambda entry: entry[0], reverse=self.mode == "max")
        evicted = [p for _, p in self.entries[self.k :]]
        self.entries = self.entries[: self.k]
        return evicted


def metric_filename(epoch: int, metrics: dict[str, float], monitor: str) -> str:
    """`epoch=007-val_loss=0.1234-val_acc=0.9876.pt`: what a run's files say at a glance."""
    parts = [f"epoch={epoch:03d}"]
    for key in dict.fromkeys(["val/loss", monitor]):
        if key in metrics:
            parts.append(f"{key.replace('/', '_')}={metrics[key]:.4f}")
    return "-".join(parts) + ".pt"


def save_safetensors(
    weights: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]
) -> None:
    """The weights alone (a model_state dict), for sharing; metadata says which model, classes."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    atomic_write(path, lambda handle: handle.write(save(state, metadata=metadata)))


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unwrapped model's state dict, with no `module.` or `_orig_mod.` prefixes."""
    return strip_wrapper_prefixes(unwrap(model).state_dict())


class Checkpointer:
    """Writes last.pt every epoch, best.pt and the top-k files when the monitor improves.

    A save that fails (disk full, unwritable directory) leaves the previous files whole and
    raises WriteFailed; with `on_error="warn"` (checkpoint.on_error) it is a warning, the
    run goes on, and best/top-k keep pointing at files that exist.
    """

    def __init__(
        self,
        directory: Path,
        monitor: str,
        mode: str,
        save_top_k: int,
        save_safetensors: bool,
        on_error: str = "error",
    ) -> None:
        if mode not in ("min", "max"):
            raise FinetuneError(f"mode={mode} must be min or max")
        if on_error not in ("error", "warn"):
            raise FinetuneError(f"checkpoint.on_error={on_error} must be error or warn")
        self.directory = directory
        self.monitor = monitor
        self.top_k = TopK(save_top_k, mode)
        self.best: dict[str, Any] = {"score": None, "epoch": None, "path": None}
        self.write_safetensors = save_safetensors
        self.on_error = on_error
        self.failed_saves = 0  # saves skipped under on_error=warn, for summary.json

    def improved(self, score: float) -> bool:
        return self.best["score"] is None or self.top_k.better(score, self.best["score"])

    def save(
        self,
        state: dict[str, Any],
        model: nn.Module,
        metrics: dict[str, float],
        metadata: dict[str, str],
    ) -> bool:
        """Save `state` as last.pt, and as best/top-k when it earns it. True when it is best."""
        if self.monitor not in metrics:
            raise FinetuneError(
                f"monitor={self.monitor} is not a logged metric; use one of {sorted(metrics)}"
            )
        score = float(metrics[self.monitor])
        is_best = self.improved(score)
        # The bookkeeping changes only once the files are written: a failed save leaves
        # best/top-k naming files that exist.
        best = dict(self.best)
        if is_best:
            best = {
                "score": score,
                "epoch": state["epoch"],
                "path": str(self.directory / "best.pt"),
            }
        top_path = self.directory / metric_filename(state["epoch"], metrics, self.monitor)
        admitted = self.top_k.admits(score)
        top_k = TopK(self.top_k.k, self.top_k.mode, list(self.top_k.entries))
        evicted = top_k.add(score, str(top_path)) if admitted else []
        state = {**state, "best": best, "top_k": [list(e) for e in top_k.entries]}
        last = self.directory / "last.pt"
        try:
            save_torch(state, last)
            # best.pt and top-k files are the same bytes: hard links, not three writes.
            if is_best:
                link_atomic(last, self.directory / "best.pt")
                if self.write_safetensors:
                    # The state's own weights: the model itself may be training on meanwhile
                    # (engine/writer.py saves from a thread).
                    weights = state["model_state_dict"]
                    save_safetensors(weights, self.directory / "model.safetensors", metadata)
            if admitted:
                link_atomic(last, top_path)
        except WriteFailed as error:
            self.failed(error, f"epoch {state['epoch']}")
            return False
        self.best, self.top_k = best, top_k
        for path in evicted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return is_best

    def save_last(self, state: dict[str, Any]) -> bool:
        """A mid-epoch last.pt (step checkpoint or preemption): no metrics, so no best/top-k.

        False when the write failed under on_error=warn.
        """
        state = {**state, "best": dict(self.best), "top_k": [list(e) for e in self.top_k.entries]}
        try:
            save_torch(state, self.directory / "last.pt")
        except WriteFailed as error:
            self.failed(error, f"step {state['global_step']}")
            return False
        return True

    def failed(self, error: WriteFailed, when: str) -> None:
        """Raise the write error, or (on_error=warn) count it and say so."""
        if self.on_error == "error":
            raise error
        self.failed_saves += 1
        log.warning(
            "checkpoint of %s not saved (checkpoint.on_error=warn, training goes on): %s",
            when,
            error,
        )

    def restore(self, state: dict[str, Any]) -> None:
        """Take best and top-k bookkeeping back from a resumed checkpoint."""
        self.best = dict(state["best"])
        self.top_k.entries = [(float(score), str(path)) for score, path in state["top_k"]]
