"""last.pt, best.pt and the top-k files of a run, saved in a crash-safe order.

The order of a save (checkpoint.py's docstring says why): last.pt first, as the commit, naming
the new best and top-k; then model.safetensors, best.pt and the new top-k file (links to
last.pt's bytes: hard links, or streamed copies); evictions last. `restore` finishes a save
that a kill cut short, from the resumed checkpoint's own bytes, so best.pt is always the epoch
last.pt names.
Every path kept in a checkpoint is a file name in the checkpoint folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from finetune.engine.checkpoint import (
    TOP_K_PREFIX,
    kill_point,
    local_name,
    save_safetensors,
    save_torch,
    saved_epoch,
)
from finetune.engine.ranking import TopK, improves_on, metric_filename, tie_breaker
from finetune.models.weights import monitored_weights
from finetune.safety.atomic import link_atomic
from finetune.safety.errors import FinetuneError, WriteFailed

log = logging.getLogger(__name__)

BEST = "best.pt"
LAST = "last.pt"
SAFETENSORS = "model.safetensors"


class Checkpointer:
    """Writes last.pt every epoch, best.pt and the top-k files when the monitor improves.

    A save that fails (disk full, unwritable directory) raises WriteFailed; with
    `on_error="warn"` (checkpoint.on_error) it is a warning and the run goes on. Either way
    last.pt names only files that exist or that the next save (or a resume) completes from it.
    """

    def __init__(
        self,
        directory: Path,
        monitor: str,
        mode: str,
        save_top_k: int,
        save_safetensors: bool,
        on_error: str = "error",
        metadata: dict[str, str] | None = None,
        is_main: bool = True,
    ) -> None:
        if mode not in ("min", "max"):
            raise FinetuneError(f"mode={mode} must be min or max")
        if on_error not in ("error", "warn"):
            raise FinetuneError(f"checkpoint.on_error={on_error} must be error or warn")
        self.directory = directory
        self.monitor = monitor
        self.top_k = TopK(save_top_k, mode)
        self.best: dict[str, Any] = {"score": None, "epoch": None, "path": None, "loss": None}
        self.write_safetensors = save_safetensors
        self.metadata = metadata or {}  # model.safetensors' metadata (model and class names)
        self.on_error = on_error
        self.is_main = is_main  # under DDP only rank 0 writes, repairs included
        self.failed_saves = 0  # saves skipped under on_error=warn, for summary.json
        self.unfinished: dict[str, Any] | None = None  # a committed save whose links failed

    def improved(self, metrics: dict[str, float]) -> bool:
        """Whether an epoch with these metrics is the best so far (ranking.py: improves_on)."""
        score, loss = float(metrics[self.monitor]), metrics.get(tie_breaker(self.monitor))
        return improves_on(self.best, score, loss, self.top_k)

    def best_file(self) -> Path | None:
        """Where the best checkpoint is, in this run's folder (None before any save)."""
        return None if self.best["path"] is None else self.directory / self.best["path"]

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
        del model  # the weights are the state's own (monitored_weights), as in best.pt
        self.metadata = metadata
        if not self.finish_unfinished(f"epoch {state['epoch']}"):
            return False
        score = float(metrics[self.monitor])
        is_best = self.improved(metrics)
        best = dict(self.best)
        if is_best:
            loss = metrics.get(tie_breaker(self.monitor))
            best = {"score": score, "epoch": state["epoch"], "path": BEST, "loss": loss}
        top_name = metric_filename(state["epoch"], metrics, self.monitor)
        top_k = TopK(self.top_k.k, self.top_k.mode, list(self.top_k.entries))
        evicted = top_k.add(score, top_name) if top_k.admits(score) else []
        state = {**state, "best": best, "top_k": [list(e) for e in top_k.entries]}
        state["epoch_end"] = True  # what a resume may complete a save from
        kill_point("before_last", state["epoch"])
        try:
            save_torch(state, self.directory / LAST)
        except WriteFailed as error:  # nothing changed: best/top-k name files that exist
            self.failed(error, f"epoch {state['epoch']}")
            return False
        self.best, self.top_k = best, top_k  # committed: last.pt names them
        kill_point("after_last", state["epoch"])
        try:
            self.complete(state, evicted)
        except WriteFailed as error:
            self.unfinished = state  # last.pt stays this save until the links are made
            self.failed(error, f"epoch {state['epoch']} (best/top-k links)")
        return is_best

    def complete(self, state: dict[str, Any], evicted: list[str]) -> None:
        """The files a committed last.pt names: best.pt, model.safetensors, the top-k file."""
        epoch, last = state["epoch"], self.directory / LAST
        if self.best["epoch"] == epoch:
            # best.pt goes last of the two: a resume checks it, and rewrites both when stale.
            if self.write_safetensors:
                weights = monitored_weights(state)
                save_safetensors(weights, self.directory / SAFETENSORS, self.metadata)
            kill_point("after_safetensors", epoch)
            link_atomic(last, self.directory / BEST)
            kill_point("after_best", epoch)
        for _, name in self.top_k.entries:
            if top_k_epoch(name) == epoch:
                link_atomic(last, self.directory / name)
        kill_point("after_top_k", epoch)
        for name in evicted:
            self.evict(name)
        self.unfinished = None

    def evict(self, name: str) -> None:
        """Delete a top-k file that fell out; only top-k files of this folder, by name."""
        name = local_name(name)
        if name.startswith(TOP_K_PREFIX) and name.endswith(".pt"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / name)

    def finish_unfinished(self, when: str) -> bool:
        """Before last.pt is overwritten: make the links an earlier failed save still owes."""
        if self.unfinished is None:
            return True
        try:
            self.complete(self.unfinished, [])
        except WriteFailed as error:
            self.failed(error, when)
            return False
        return True

    def save_last(self, state: dict[str, Any]) -> bool:
        """A mid-epoch last.pt (step checkpoint or preemption): no metrics, so no best/top-k.

        False when the write failed under on_error=warn.
        """
        if not self.finish_unfinished(f"step {state['global_step']}"):
            return False
        state = {**state, "best": dict(self.best), "top_k": [list(e) for e in self.top_k.entries]}
        state["epoch_end"] = False
        try:
            save_torch(state, self.directory / LAST)
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
        """Take best and top-k back from a resumed checkpoint, and finish its save if cut short.

        Stored paths are read as file names in this folder (checkpoint.local_name), and best is
        always best.pt.
        """
        best = dict(state["best"])
        if best["path"] is not None:
            best["path"] = BEST  # the best checkpoint has one name, whatever the file says
        self.best = best
        self.top_k.entries = [(float(score), local_name(path)) for score, path in state["top_k"]]
        if self.is_main:
            self.repair(state)

    def repair(self, state: dict[str, Any]) -> None:
        """Make best.pt and the top-k files what `state` names, from its own bytes if need be.

        A kill after last.pt was committed leaves best.pt or the new top-k file one epoch behind
        and evicted files in place. An epoch-end state is the very checkpoint those files should
        hold, so it is written there again; top-k files of earlier epochs that fell out are
        deleted (later ones belong to a run that went further, and are left alone).
        """
        epoch = state["epoch"]
        epoch_end = bool(state.get("epoch_end"))  # checkpoints before this key: no repair
        kept = {name for _, name in self.top_k.entries}
        for name in kept:
            if epoch_end and top_k_epoch(name) == epoch and not (self.directory / name).is_file():
                save_torch(state, self.directory / name)
        best = self.best_file()
        if best is not None and saved_epoch(best) != self.best["epoch"]:
            self.repair_best(state, best, kept)
        if epoch_end:
            for path in self.directory.glob(f"{TOP_K_PREFIX}*.pt"):
                number = top_k_epoch(path.name)
                if path.name not in kept and number is not None and number <= epoch:
                    self.evict(path.name)

    def repair_best(self, state: dict[str, Any], best: Path, kept: set[str]) -> None:
        """best.pt from `state` (its own epoch) or from the top-k file of the best epoch."""
        log.warning("Finishing a save that was cut short: %s is epoch %s", best, self.best["epoch"])
        if bool(state.get("epoch_end")) and self.best["epoch"] == state["epoch"]:
            save_torch(state, best)
            if self.write_safetensors:
                weights = monitored_weights(state)
                save_safetensors(weights, self.directory / SAFETENSORS, self.metadata)
            return
        source = next(
            (
                self.directory / name
                for name in kept
                if top_k_epoch(name) == self.best["epoch"] and (self.directory / name).is_file()
            ),
            None,
        )
        if source is None:
            log.warning(
                "%s does not hold epoch %s, and no top-k file does", best, self.best["epoch"]
            )
            return
        link_atomic(source, best)


def top_k_epoch(name: str) -> int | None:
    """The epoch in a top-k file name (`epoch=007-...pt` -> 7); None for other names."""
    head = name.removeprefix(TOP_K_PREFIX).split("-", 1)[0]
    if not name.startswith(TOP_K_PREFIX) or not head.isdigit():
        return None
    return int(head)
