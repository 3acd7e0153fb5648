"""Collect a multi-label report: the model's logits on validation (for the temperature) and on
one split, then records/multilabel_report.py draws it. Once, at the end of a run or by
eval.py, on rank 0 alone, in split order (engine/report.py's passes)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from finetune.data import Preprocessing, Splits
from finetune.engine.report import split_outputs
from finetune.records.calibration import fit_temperature
from finetune.records.exhibits import display_image, sample_names
from finetune.records.multilabel_report import (
    LabelReportInputs,
    decision_logits,
    top_loss_positions,
    write_label_report,
)
from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)


def write_multilabel_report(
    report_dir: Path,
    title: str,
    model: nn.Module,
    splits: Splits,
    split: str,
    prep: Preprocessing,
    cfg: DictConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    curves: Path | None = None,
) -> Path:
    """The multi-label report of `model` on `split` in `report_dir`; returns its index.html."""
    started = time.perf_counter()
    dataset = getattr(splits, split)
    if len(dataset) == 0 or len(splits.val) == 0:
        raise FinetuneError(f"the {split} or the val split is empty: there is nothing to report on")
    val_logits, val_targets, _ = split_outputs(model, splits.val, cfg.data, device, dtype)
    logits, targets, indices = split_outputs(model, dataset, cfg.data, device, dtype)
    top = top_loss_positions(logits, targets, cfg.report.top_losses)
    inputs = LabelReportInputs(
        title=title,
        split=split,
        label_names=list(splits.class_names),
        threshold=float(cfg.task.threshold),
        logits=logits,
        targets=targets,
        names=sample_names(dataset, split, indices),
        gallery=[(i, display_image(dataset, int(indices[i]), prep)) for i in top],
        temperature=fit_temperature(*decision_logits(val_logits, val_targets)),
        calibration_bins=cfg.report.calibration_bins,
        curves=curves,
    )
    page = write_label_report(report_dir, inputs)
    log.info("Report written in %.1fs: %s", time.perf_counter() - started, page)
    return page
