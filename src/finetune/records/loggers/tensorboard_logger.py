"""TensorBoard event files in <run>/tensorboard: scalars, histograms, pictures, hparams.

Scalars come every call; the heavier records follow `conf/logger/tensorboard.yaml`: weight
and gradient histograms every `histogram_every_n_epochs`, a labelled grid of validation
images, a confusion-matrix figure, PR curves per class, the model graph once and an
embedding projector of validation features (the last two off by default).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from finetune.records.loggers.base import Logger
from finetune.records.predictions import Predictions

log = logging.getLogger(__name__)


class TensorBoardLogger(Logger):
    """A resumed run keeps writing to the same directory; TensorBoard merges the files."""

    def __init__(self, directory: Path, cfg: DictConfig, resume_step: int | None = None) -> None:
        # Resumed at step T: events a crashed run wrote after T are hidden, then rewritten.
        purge_step = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(directory), purge_step=purge_step)
        self.histogram_every = cfg.histogram_every_n_epochs
        self.grid_images = cfg.images
        self.images = max(cfg.images, int(cfg.graph))  # the graph is traced on one image
        self.confusion_matrix = cfg.confusion_matrix
        self.pr_curve_classes = cfg.pr_curve_classes
        self.graph = cfg.graph
        self.embedding_samples = cfg.embedding_samples
        self.wants_predictions = bool(
            self.images or self.confusion_matrix or self.pr_curve_classes or self.embedding_samples
        )

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_images(self, tag: str, image: torch.Tensor, step: int) -> None:
        self.writer.add_image(tag, image, step)

    def log_histograms(self, model: nn.Module, epoch: int, step: int) -> None:
        """Every parameter's values and last gradient, as weights/NAME and gradients/NAME."""
        if not self.histogram_every or epoch % self.histogram_every:
            return
        for name, param in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", param.detach(), step)
            if param.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", param.grad.detach(), step)

    def log_predictions(self, predictions: Predictions, epoch: int, step: int) -> None:
        for tag, picture in predictions.task_pictures(self.grid_images, epoch).items():
            if tag != "val/confusion_matrix" or self.confusion_matrix:
                self.log_images(tag, picture, step)
        for tag, (columns, rows) in predictions.task_tables(self.grid_images).items():
            self.writer.add_text(tag, markdown_table(columns, rows), step)
        for index in range(min(self.pr_curve_classes, predictions.probs.shape[1])):
            self.writer.add_pr_curve(
                f"pr_curve/{predictions.class_names[index]}",
                predictions.is_target(index),
                predictions.probs[:, index],
                step,
            )
        if self.embedding_samples and predictions.features is not None:
            count = predictions.features.shape[0]
            self.writer.add_embedding(
                predictions.features,
                metadata=[predictions.label_text(t) for t in predictions.targets[:count]],
                label_img=predictions.sprites,
                global_step=step,
                tag="val/features",
            )
        if self.graph and predictions.example is not None:
            self.graph = False  # once per run: the graph does not change
            self.log_graph(predictions.model, predictions.example)

    def log_graph(self, model: nn.Module, example: torch.Tensor) -> None:
        """The traced model; a model that cannot be traced is a warning, not a failed run."""
        was_training = model.training
        model.eval()
        try:
            with warnings.catch_warnings():  # torch.jit.trace is deprecated, and all there is
                warnings.simplefilter("ignore", FutureWarning)
                self.writer.add_graph(model, example.to(next(model.parameters()).device))
        except Exception as error:  # torch.jit.trace fails on some architectures
            log.warning("TensorBoard graph skipped: %s", error)
        model.train(was_training)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """The HParams tab: one row per run of a sweep, with final, best and test metrics.

        Metric tags get the `hparam/` prefix so that they do not clash with the scalars of
        the same name (val/acc of the last epoch would otherwise shadow the best one).
        """
        plain = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()
        }
        self.writer.add_hparams(plain, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def finish(self, status: str) -> None:
        self.writer.close()


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A table as TensorBoard's text tab renders it (markdown; a "|" in a cell escaped)."""

    def cell(value: Any) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
