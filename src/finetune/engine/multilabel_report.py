"""Collect a multi-label report: the model's logits on validation (for the temperature) and on
one split, then records/multilabel_report.py draws it. Once, at the end of a run or by
eval.py, on rank 0 alone, in split order (engine/report.py's passes)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from finetune.engine.report import check_not_empty, val_and_split_outputs
from finetune.engine.report_request import ReportRequest
from finetune.records.calibration import fit_temperature
from finetune.records.exhibits import display_image, sample_names
from finetune.records.multilabel_report import (
    LabelReportInputs,
    decision_logits,
    top_loss_positions,
    write_label_report,
)

log = logging.getLogger(__name__)


def write_multilabel_report(request: ReportRequest) -> Path:
    """The multi-label report of `request.model` on its split; returns its index.html."""
    started, cfg, dataset = time.perf_counter(), request.cfg, request.dataset
    check_not_empty(request)
    (val_logits, val_targets, _), (logits, targets, indices) = val_and_split_outputs(request)
    top = top_loss_positions(logits, targets, cfg.report.top_losses)
    inputs = LabelReportInputs(
        title=request.title,
        split=request.split,
        label_names=list(request.splits.class_names),
        threshold=float(cfg.task.threshold),
        logits=logits,
        targets=targets,
        names=sample_names(dataset, request.split, indices),
        gallery=[(i, display_image(dataset, int(indices[i]), request.prep)) for i in top],
        temperature=fit_temperature(*decision_logits(val_logits, val_targets)),
        calibration_bins=cfg.report.calibration_bins,
        curves=request.curves,
    )
    page = write_label_report(request.report_dir, inputs)
    log.info("Report written in %.1fs: %s", time.perf_counter() - started, page)
    return page
