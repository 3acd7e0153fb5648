"""Collect what a report is drawn from: the model's logits on validation and on one split.

Called once at the end of a run (after the test phase) and by eval.py, never per epoch, so
the report costs no training time. The passes are in order and unsharded (rank 0 alone), so
sample i of the outputs is sample i of the split: the gallery can fetch its images, and the
per-sample names (files, texts) line up. What the samples are (images, texts) is the task's
(Task.report_exhibits, records/exhibits.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from finetune.data.folders import collate_readable
from finetune.data.loaders import decoded_on_cpu, worker_count
from finetune.engine.precision import autocast
from finetune.engine.report_request import ReportRequest
from finetune.records.calibration import fit_temperature
from finetune.records.exhibits import ImageExhibits
from finetune.records.report import ReportInputs, top_loss_indices, write_report
from finetune.safety.errors import FinetuneError

if TYPE_CHECKING:
    from finetune.engine.build import Parts
    from finetune.engine.rundir import RunPaths
    from finetune.tasks.base import Task

log = logging.getLogger(__name__)


class Indexed(Dataset):
    """A split whose samples carry their index (an unreadable one stays None, and is dropped)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample = self.dataset[index]
        return None if sample is None else (*sample, index)


def kind_of(dataset: Dataset, device: torch.device) -> str:
    """The loader kind of a split: "tensor" where a sample is a copy from memory and loader
    workers gain nothing (digits held as tensors; image files decoded into data.cache, on the
    CPU), else "pil" (files decoded per sample)."""
    held = hasattr(dataset, "images") and not hasattr(dataset, "samples")
    return "tensor" if held or decoded_on_cpu(dataset, device) else "pil"


@torch.no_grad()  # not inference_mode: fitting the temperature needs autograd on these
def split_outputs(
    model: nn.Module,
    dataset: Dataset,
    data_cfg: DictConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    collate: Callable[[list[Any]], Any] = collate_readable,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, targets, sample indices) of a whole split, in order, on the CPU; `collate`
    batches (input, target, index) samples (images by default; texts pad theirs)."""
    loader = DataLoader(
        Indexed(dataset),
        batch_size=data_cfg.batch_size,
        num_workers=worker_count(data_cfg.num_workers, kind_of(dataset, device)),
        collate_fn=collate,
    )
    model.eval()
    parts: list[tuple[torch.Tensor, ...]] = []
    for images, targets, indices in loader:
        with autocast(device, dtype):
            logits = model(images.to(device)).float()
        parts.append((logits, targets, indices))
    logits, targets, indices = (torch.cat(column) for column in zip(*parts, strict=True))
    return logits.cpu(), targets.long(), indices.long()


def request_outputs(
    request: ReportRequest, dataset: Dataset, collate: Callable[[list[Any]], Any] = collate_readable
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`split_outputs` of `dataset` with the request's model, loading and precision."""
    return split_outputs(
        request.model, dataset, request.cfg.data, request.device, request.dtype, collate
    )


def val_and_split_outputs(
    request: ReportRequest, collate: Callable[[list[Any]], Any] = collate_readable
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """`request_outputs` of val (the temperature is fitted there) and of the reported split:
    one pass when that split is the val samples (a folder without test/), not two."""
    val = request_outputs(request, request.splits.val, collate)
    if request.split == "val" or (request.split == "test" and request.splits.test_is_val):
        return val, val
    return val, request_outputs(request, request.dataset, collate)


def check_not_empty(request: ReportRequest) -> None:
    """A report needs samples of its split, and of val (where the temperature is fitted)."""
    if len(request.dataset) == 0 or len(request.splits.val) == 0:
        split = request.split
        raise FinetuneError(f"the {split} or the val split is empty: there is nothing to report on")


def write_run_report(request: ReportRequest, exhibits: Any = None) -> Path:
    """A classifier's report of `request.model` on its split (temperature fitted on val).

    `exhibits`: what the samples are and how they batch (Task.report_exhibits); None: images.
    """
    exhibits = exhibits or ImageExhibits()
    started, cfg, dataset = time.perf_counter(), request.cfg, request.dataset
    check_not_empty(request)
    (val_logits, val_targets, _), (logits, targets, indices) = val_and_split_outputs(
        request, exhibits.collate
    )
    top = top_loss_indices(logits, targets, cfg.report.top_losses)
    inputs = ReportInputs(
        title=request.title,
        split=request.split,
        class_names=list(request.splits.class_names),
        logits=logits,
        targets=targets,
        names=exhibits.names(dataset, request.split, indices),
        gallery=[(i, exhibits.exhibit(dataset, int(indices[i]), request.prep)) for i in top],
        temperature=fit_temperature(val_logits, val_targets),
        calibration_bins=cfg.report.calibration_bins,
        curves=request.curves,
        exhibits=exhibits,
    )
    page = write_report(request.report_dir, inputs)
    log.info("Report written in %.1fs: %s", time.perf_counter() - started, page)
    return page


def report_at_end_of_run(paths: RunPaths, parts: Parts, cfg: DictConfig) -> str | None:
    """The run's report/ on its test split; a report that fails is a warning, not a failed run.

    The run has trained and tested by now: its checkpoints and metrics are what matter.
    """
    if not has_report(parts.task):
        return None
    title = f"{cfg.model.name} on {cfg.data.name} (test): {paths.root}"
    try:
        request = ReportRequest(
            paths.root / "report", title, parts.model, parts.splits, "test", parts.prep, cfg,
            parts.stepper.device, parts.stepper.dtype, curves=paths.curves,
        )  # fmt: skip
        page = parts.task.write_report(request)
    except Exception as error:  # noqa: BLE001 (a bug in drawing must not fail a finished run)
        log.warning("The report could not be written (the run is complete): %r", error)
        return None
    return str(page)


def has_report(task: Task) -> bool:
    """Whether the task draws a report (Task.has_report); a task without one is said once."""
    if task.has_report:
        return True
    log.info("No report for task %s: it draws none yet", type(task).__name__)
    return False
