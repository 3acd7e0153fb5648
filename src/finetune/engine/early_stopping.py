"""Early stopping: end a run once `monitor` has not improved for `trainer.patience` epochs.

An improvement must beat the best value so far by more than `trainer.min_delta` (Keras's and
Lightning's rule). The run then ends as usual, its test on the best checkpoint included, with
status `early_stopped` in summary.json. The state rides in each checkpoint, so a resumed run
stops at the very epoch the uninterrupted one would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)


@dataclass
class EarlyStopping:
    """Counts epochs without improvement; `patience=None` never stops."""

    patience: int | None
    min_delta: float
    mode: str
    best: float | None = None
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        whole = isinstance(self.patience, int) and not isinstance(self.patience, bool)
        if self.patience is not None and not (whole and self.patience >= 1):
            raise FinetuneError(
                f"trainer.patience={self.patience} must be a positive number of epochs, "
                "or null (never stop early)"
            )
        if self.min_delta < 0:
            raise FinetuneError(f"trainer.min_delta={self.min_delta} must be 0 or more")

    def step(self, score: float) -> bool:
        """Take an epoch's monitored value; True when the run should stop now."""
        if self.improved(score):
            self.best, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def improved(self, score: float) -> bool:
        if self.best is None:
            return True
        gain = score - self.best if self.mode == "max" else self.best - score
        return gain > self.min_delta

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


def early_stopping(trainer: Any, mode: str) -> EarlyStopping:
    """The run's EarlyStopping from `trainer.patience` and `trainer.min_delta`."""
    return EarlyStopping(trainer.patience, float(trainer.min_delta), mode)


def stop_early(cfg: DictConfig, epoch: int, summary: dict[str, Any]) -> None:
    """Say why the run ends here; summary.json's status becomes early_stopped."""
    log.info(
        "Early stopping at epoch %d: %s has not improved by more than %s for %d epochs",
        epoch,
        cfg.monitor,
        cfg.trainer.min_delta,
        cfg.trainer.patience,
    )
    summary["early_stopped"] = True


def finished_status(summary: dict[str, Any]) -> str:
    """completed, or early_stopped when trainer.patience ended the run (tested as usual)."""
    return "early_stopped" if summary.get("early_stopped") else "completed"


__all__ = ["EarlyStopping", "early_stopping", "finished_status", "stop_early"]
