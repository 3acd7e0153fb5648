"""What a task is: the part of a run that differs between kinds of learning.

The engine (setup, the loop, evaluation, checkpoints, resume, loggers, sweeps, DDP) never asks
which task runs. A task knows how a batch goes into the model and what its targets are, the
loss, the metrics and the default monitor (conf/task/*.yaml), how outputs become probabilities
and decisions, the pictures of a validation pass and the rows a prediction writes.

Adding a task is one file here (a subclass of Task) and one YAML in conf/task/ whose `_target_`
names it. The `_target_` is only ever read from this project's composed config, never from a
checkpoint or a run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from finetune.data.splits import labels_of
from finetune.tasks.losses import build_loss

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

    from finetune.data import Preprocessing, Splits
    from finetune.data.inputs import InputFiles
    from finetune.engine.distributed import DistInfo
    from finetune.engine.report_request import ReportRequest
    from finetune.models.factory import ModelInfo
    from finetune.records.predictions import Predictions


class EpochMetrics(Protocol):
    """What evaluation needs of a task's metrics: torchmetrics' four methods, so a task may
    return a torchmetrics MetricCollection or count its own (tasks/confusion_metrics.py).
    `compute` gives every rank the figures over all ranks."""

    def to(self, device: torch.device) -> EpochMetrics: ...
    def reset(self) -> None: ...
    def update(self, probabilities: torch.Tensor, targets: torch.Tensor) -> None: ...
    def compute(self) -> dict[str, torch.Tensor]: ...


class Task:
    """A kind of learning. Subclasses fill in what differs; the defaults fit classifiers."""

    def __init__(self, cfg: DictConfig, class_names: list[str]) -> None:
        self.cfg = cfg
        self.class_names = list(class_names)

    @property
    def num_outputs(self) -> int:
        return len(self.class_names)

    def attach(self, splits: Splits) -> None:
        """See the data before the model is built (a text task trains its tokenizer here)."""

    def reopen(self, run_dir: Path) -> None:
        """Read what `attach` kept in a finished run's directory (eval, predict, load_model)."""

    def build_model(self, model_cfg: DictConfig) -> tuple[nn.Module, ModelInfo]:
        """The model from its source, with an output layer of `num_outputs`."""
        from finetune.models.factory import build_model

        return build_model(model_cfg, num_classes=self.num_outputs)

    def data_loaders(
        self,
        cfg: DictConfig,
        splits: Splits,
        prep: Preprocessing,
        device: torch.device,
        rank: DistInfo,
    ) -> dict[str, DataLoader]:
        """Seeded train/val/test loaders of images preprocessed as `prep` says."""
        from finetune.data import build_loaders
        from finetune.data.augment import augmenting, train_transform
        from finetune.data.cache import train_transform_on_views
        from finetune.data.view_augment import view_recipe

        loaders = build_loaders(cfg.data, splits, prep, cfg.seed, device, rank)
        recipe = train_transform(cfg.augment, cfg.data, splits.kind, prep)
        batched = view_recipe(cfg.augment, prep) if splits.kind == "pil" else None
        splits.train.transform = train_transform_on_views(
            splits.train, recipe, augmenting(cfg.augment, cfg.data), batched
        )
        return loaders

    def preprocessing(self, model_info: ModelInfo, data_cfg: DictConfig) -> Preprocessing:
        """Input statistics the model expects (the source's), at `data.image_size`."""
        from finetune.data import resolve_preprocessing

        return resolve_preprocessing(model_info.preprocessing, data_cfg.image_size)

    def example_input(self, prep: Preprocessing) -> torch.Tensor:
        """One model input of the right shape and type (for the model summary in train.log)."""
        return torch.zeros(1, 3, prep.image_size, prep.image_size)

    def inputs_and_targets(
        self, batch: Any, device: torch.device, channels_last: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader's batch as (model input, targets) on `device`."""
        images, targets = batch
        images = images.to(device, non_blocking=True)
        if channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(device, non_blocking=True)

    def loss(self, train: Dataset) -> nn.Module:
        """The criterion from `cfg.loss`; `class_weights=auto` counts the training split."""
        return build_loss(self.cfg.loss, self.num_outputs, lambda: labels_of(train))

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """A batch's summed evaluation loss, for a split's mean over its samples (and ranks).

        Plain and unweighted whatever `cfg.loss` trains with (smoothing, class weights, soft
        targets), so that val/loss means the same in every run and can be compared.
        """
        raise NotImplementedError

    def metric_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Targets as the task's epoch metrics (`metrics()`) take them."""
        return targets

    def metrics(self) -> EpochMetrics:
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decisions(self, probabilities: torch.Tensor) -> torch.Tensor:
        """What the model predicts: a class index per sample, or a 0/1 vector of labels."""
        raise NotImplementedError

    def label_text(self, value: torch.Tensor) -> str:
        """A target or a decision in words, for captions and prediction rows."""
        raise NotImplementedError

    @property
    def sees_images(self) -> bool:
        """Whether the model's inputs are images (the augmented-image grid at a run's start)."""
        return True

    @property
    def rate_unit(self) -> str:
        """What the log line and the progress bar count training throughput in."""
        return "img/s" if self.sees_images else "samples/s"

    @property
    def has_report(self) -> bool:
        """Whether the run report (`write_report`) is drawn for this task."""
        return False

    def write_report(self, request: ReportRequest) -> Path:
        """The report `request` asks for (where `has_report`), in its report_dir; its index.html.

        A classifier's: confusion, top losses, calibration (engine/report.py).
        """
        from finetune.engine.report import write_run_report

        return write_run_report(request, self.report_exhibits())

    def report_exhibits(self) -> Any:
        """What the report shows of its samples and how it batches them (records/exhibits.py)."""
        from finetune.records.exhibits import ImageExhibits

        return ImageExhibits()

    def pictures(self, predictions: Predictions, images: int, epoch: int) -> dict[str, Any]:
        """Tag -> picture (a float (3, H, W) tensor in [0, 1]) of a validation pass."""
        from finetune.records.visuals import labelled_grid

        if not images:
            return {}
        return {"val/images": labelled_grid(predictions, images, self.label_text)}

    def tables(self, predictions: Predictions, rows: int) -> dict[str, Any]:
        """Tag -> (columns, rows) of a validation pass, for the loggers' text and table tabs."""
        return {}

    def prediction_inputs(
        self, spec: str, prep: Preprocessing, data_cfg: DictConfig, settings: DictConfig
    ) -> tuple[InputFiles, DataLoader]:
        """predict's inputs (`input=`: images, a folder, a glob or a table) and their loader.

        The loader yields {"images", "indices", "errors"}: a batch of model inputs, their
        indices into the inputs, and the unreadable ones.
        """
        from torch.utils.data import DataLoader

        from finetune.data.inputs import (
            PredictImages,
            collate_inputs,
            gather_inputs,
            predict_transform,
        )

        inputs = gather_inputs(spec, self.class_names)
        loader = DataLoader(
            PredictImages(inputs.files, predict_transform(prep, data_cfg)),
            batch_size=settings.batch_size,
            num_workers=settings.num_workers,
            collate_fn=collate_inputs,
        )
        return inputs, loader

    def prediction_rows(
        self, names: list[str], probabilities: torch.Tensor, top_k: int
    ) -> list[dict[str, Any]]:
        """One row per input for predict's CSV."""
        raise NotImplementedError

    def kept_outputs(self, probabilities: torch.Tensor) -> torch.Tensor:
        """What predict keeps of a batch's probabilities until every input is done, and hands
        to `prediction_rows` and `prediction_pictures`: all of them (a few floats an input)."""
        return probabilities

    def unmirror(self, outputs: torch.Tensor) -> torch.Tensor:
        """The outputs of a mirrored input as those of the input (predict.tta=flip).

        A class does not move when its image is mirrored: as they are.
        """
        return outputs

    def prediction_pictures(
        self,
        out: Path,
        files: list[Path],
        rows: list[dict[str, Any]],
        probabilities: torch.Tensor,
        settings: DictConfig,
    ) -> dict[str, Path]:
        """predict's pictures of the inputs (`files`, in the rows' order) -> kind: path.

        A contact sheet of the first `predict.sheet_images` with their predicted labels.
        """
        from finetune.records.prediction_files import contact_sheet

        shown = min(settings.sheet_images, len(rows), len(files))
        if not shown:
            return {}
        return {"sheet": contact_sheet(out / "contact_sheet.png", files[:shown], rows[:shown])}


def build_task(cfg: DictConfig, class_names: list[str]) -> Task:
    """The task that `cfg.task._target_` names (from this project's composed config only)."""
    from hydra.utils import get_class

    from finetune.safety.errors import FinetuneError

    cls = get_class(cfg.task._target_)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise FinetuneError(f"task._target_={cfg.task._target_} is not a finetune Task")
    return cls(cfg, class_names)
