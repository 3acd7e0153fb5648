"""The logger interface the training loop calls, and the fan-out to every enabled backend.

A backend overrides only what it can show; every other call is a no-op. The loop never asks
which backends are on: it calls `loggers.<method>` and each backend decides (TensorBoard
draws histograms on its own schedule, W&B keeps the best metrics in its summary, ...).
"""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from finetune.records.predictions import Predictions
    from finetune.tasks.base import Task


class Logger:
    """What the loop calls; every method is optional for a backend."""

    # How many validation images, PR-curve classes and embedding features the backend wants
    # kept from each validation pass (0: none); the fan-out keeps the largest of each.
    images: int = 0
    pr_curve_classes: int = 0
    embedding_samples: int = 0
    # Whether the backend draws from the validation predictions at all.
    wants_predictions: bool = False

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Scalars at a global step: train/loss every few steps, val/* and lr each epoch."""

    def log_epoch(self, row: dict[str, float]) -> None:
        """One row per epoch (metrics.csv)."""

    def log_images(self, tag: str, image: torch.Tensor, step: int) -> None:
        """One image, a float (3, H, W) tensor in [0, 1] (a grid is one image)."""

    def log_figure(self, tag: str, figure: Figure, step: int) -> None:
        """A matplotlib figure (the LR finder's plot), drawn to pixels once, logged as an image."""
        from finetune.records.visuals import figure_to_image

        self.log_images(tag, figure_to_image(figure), step)

    def log_histograms(self, model: nn.Module, epoch: int, step: int) -> None:
        """Weights and gradients (the last step's .grad, read after the epoch: no extra sync)."""

    def log_predictions(self, predictions: Predictions, epoch: int, step: int) -> None:
        """Pictures of a validation pass: labelled image grid, confusion matrix, PR curves."""

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """The hyper-parameters and the run's final, best and test metrics, at its end."""

    def log_checkpoint(self, path: Path, metadata: dict[str, Any]) -> None:
        """The best checkpoint, for backends that store files (W&B artifacts)."""

    def finish(self, status: str) -> None:
        """Flush and close; called for every run, failed ones included."""


class Loggers(Logger):
    """Fan-out to every enabled backend; `Loggers([])` (ranks other than 0) does nothing."""

    def __init__(self, backends: list[Logger]) -> None:
        self.backends = backends
        self.images = max((b.images for b in backends), default=0)
        self.pr_curve_classes = max((b.pr_curve_classes for b in backends), default=0)
        self.embedding_samples = max((b.embedding_samples for b in backends), default=0)
        self.wants_predictions = any(b.wants_predictions for b in backends)
        self.finished = False

    @property
    def wandb_run_id(self) -> str | None:
        """The W&B run's id, stored in checkpoints so that `resume=` continues the same run."""
        ids = [b.run_id for b in self.backends if getattr(b, "run_id", None)]
        return ids[0] if ids else None

    def predictions(
        self,
        model: nn.Module,
        task: Task,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ) -> Predictions | None:
        """A collector for the next validation pass, or None when no backend draws pictures."""
        if not self.wants_predictions:
            return None
        from finetune.records.predictions import Predictions

        return Predictions(
            model,
            task.class_names,
            task.label_text,
            task.pictures,
            mean,
            std,
            images=self.images,
            pr_curve_classes=self.pr_curve_classes,
            embedding_samples=self.embedding_samples,
            tabulate=task.tables,
        )

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for backend in self.backends:
            backend.log_metrics(metrics, step)

    def log_epoch(self, row: dict[str, float]) -> None:
        for backend in self.backends:
            backend.log_epoch(row)

    def log_images(self, tag: str, image: torch.Tensor, step: int) -> None:
        for backend in self.backends:
            backend.log_images(tag, image, step)

    def log_figure(self, tag: str, figure: Figure, step: int) -> None:
        for backend in self.backends:
            backend.log_figure(tag, figure, step)

    def log_histograms(self, model: nn.Module, epoch: int, step: int) -> None:
        for backend in self.backends:
            backend.log_histograms(model, epoch, step)

    def log_predictions(self, predictions: Predictions | None, epoch: int, step: int) -> None:
        if predictions is None:
            return
        predictions.close()
        for backend in self.backends:
            backend.log_predictions(predictions, epoch, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        for backend in self.backends:
            backend.log_hparams(hparams, metrics)

    def log_checkpoint(self, path: Path, metadata: dict[str, Any]) -> None:
        for backend in self.backends:
            backend.log_checkpoint(path, metadata)

    def finish(self, status: str) -> None:
        """Close every backend once; a second call (the error path after success) is a no-op."""
        if self.finished:
            return
        self.finished = True
        atexit.unregister(self.finish)
        for backend in self.backends:
            backend.finish(status)
