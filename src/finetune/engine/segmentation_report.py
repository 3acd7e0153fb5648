"""Collect a segmentation report: one pass over a split, counted pixel by pixel.

The pass keeps no logits (a split of large masks would not fit): per batch it adds to the
pixel confusion counts (labelled pixels only) and keeps each image's predicted mask (bytes)
and its IoU, from which the worst images are picked. Like the classification report
(engine/report.py) it runs once, after the test phase or in eval.py, in order and unsharded.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from finetune.data.folders import collate_readable
from finetune.data.loaders import worker_count
from finetune.engine.precision import autocast
from finetune.engine.report import Indexed, kind_of
from finetune.engine.report_request import ReportRequest
from finetune.records.exhibits import display_image, sample_names
from finetune.records.segmentation_report import MaskReportInputs, write_mask_report
from finetune.safety.errors import FinetuneError
from finetune.tasks.confusion_metrics import Counts, iou_per_class, macro_mean, mean_iou

log = logging.getLogger(__name__)


def pixel_counts(targets: torch.Tensor, preds: torch.Tensor, n: int, ignore: int) -> torch.Tensor:
    """counts[true, predicted] over the labelled pixels of a batch."""
    labelled = targets != ignore
    pairs = targets[labelled] * n + preds[labelled]
    return torch.bincount(pairs, minlength=n * n).view(n, n)


def image_ious(targets: torch.Tensor, preds: torch.Tensor, n: int, ignore: int) -> torch.Tensor:
    """Each image's IoU: the mean over the classes in its true or predicted mask (1 for an
    image with no labelled pixel: nothing in it is wrong)."""
    ious = []
    for target, pred in zip(targets, preds, strict=True):
        counts = Counts.of(pixel_counts(target, pred, n, ignore))
        ious.append(macro_mean(iou_per_class(counts), counts) if counts.support.any() else 1.0)
    return torch.tensor(ious, dtype=torch.float64)


@torch.no_grad()
def mask_pass(
    model: nn.Module,
    dataset: Dataset,
    data_cfg: DictConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    n: int,
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixel confusion counts, per-image IoU, predicted masks, sample indices) of a split."""
    loader = DataLoader(
        Indexed(dataset),
        batch_size=data_cfg.batch_size,
        num_workers=worker_count(data_cfg.num_workers, kind_of(dataset, device)),
        collate_fn=collate_readable,
    )
    model.eval()
    ignore = int(data_cfg.ignore_index)
    counts = torch.zeros(n, n, dtype=torch.int64)
    ious, preds, indices = [], [], []
    for images, targets, index in loader:
        with autocast(device, dtype):
            pred = model(images.to(device)).float().argmax(dim=1).cpu()
        targets = targets.long()
        counts += pixel_counts(targets, pred, n, ignore)
        ious.append(image_ious(targets, pred, n, ignore))
        preds.append(pred.to(torch.uint8 if n <= 256 else torch.int64))
        indices.append(index.long())
    return counts.numpy(), torch.cat(ious), torch.cat(preds), torch.cat(indices)


def write_segmentation_report(request: ReportRequest) -> Path:
    """The segmentation report of `request.model` on its split; returns its index.html."""
    started, cfg, dataset, split = time.perf_counter(), request.cfg, request.dataset, request.split
    if len(dataset) == 0:
        raise FinetuneError(f"the {split} split is empty: there is nothing to report on")
    n = len(request.splits.class_names)
    counts, ious, preds, indices = mask_pass(
        request.model, dataset, cfg.data, request.device, request.dtype, n
    )
    # IoU by the rules test/iou_<class> and test/miou follow, so the two agree.
    counted = Counts.of(torch.from_numpy(counts), int(cfg.data.ignore_index))
    worst = np.argsort(ious.numpy(), kind="stable")[: cfg.report.top_losses].tolist()
    gallery = []
    for position in worst:
        index = int(indices[position])
        gallery.append((position, display_image(dataset, index, request.prep), dataset[index][1]))
    inputs = MaskReportInputs(
        title=request.title,
        split=split,
        class_names=list(request.splits.class_names),
        ignore_index=int(cfg.data.ignore_index),
        counts=counts,
        class_iou=iou_per_class(counted).tolist(),
        mean_iou=float(mean_iou(counted)),
        ious=ious,
        preds=preds,
        names=sample_names(dataset, split, indices),
        gallery=gallery,
        curves=request.curves,
    )
    page = write_mask_report(request.report_dir, inputs)
    log.info("Report written in %.1fs: %s", time.perf_counter() - started, page)
    return page
