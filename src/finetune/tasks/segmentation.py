"""Semantic segmentation: a class per pixel, softmax over classes, smp models (models/smp.py).

Targets are (H, W) masks of class indices; pixels equal to `data.ignore_index` count in no loss
and no metric. Metrics count every labelled pixel of a split (tasks/confusion_metrics.py): mean
IoU (the default monitor, `val/miou`), Dice (pixel F1, macro), pixel accuracy, and each class's IoU
(`val/iou_<class>`, in summary.json and the HParams table). Pictures: image | true | predicted
overlays of a fixed set of validation images, and the pixel confusion matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

from finetune.tasks.base import Task
from finetune.tasks.confusion_metrics import (
    ConfusionMetrics,
    accuracy,
    f1_macro,
    iou_per_class,
    mean_iou,
)

if TYPE_CHECKING:
    from finetune.engine.report_request import ReportRequest
    from finetune.records.predictions import Predictions


class Segmentation(Task):
    @property
    def ignore_index(self) -> int:
        return int(self.cfg.data.ignore_index)

    def metrics(self) -> ConfusionMetrics:
        """Over the labelled pixels of a split: mean IoU, Dice (macro pixel F1), pixel accuracy,
        and each class's IoU as iou_<class>, all from one confusion matrix."""
        return ConfusionMetrics(
            self.num_outputs,
            {"miou": mean_iou, "dice": f1_macro, "pixel_acc": accuracy},
            per_class={"iou_": (iou_per_class, self.safe_names())},
            ignore_index=self.ignore_index,
        )

    def safe_names(self) -> list[str]:
        """Class names as metric-name parts (no slashes or spaces)."""
        return [name.replace("/", "_").replace(" ", "_") for name in self.class_names]

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each image's cross-entropy averaged over its labelled pixels, summed over the batch."""
        ce = torch.nn.functional.cross_entropy(
            logits, targets, ignore_index=self.ignore_index, reduction="none"
        )
        labelled = (targets != self.ignore_index).sum(dim=(1, 2)).clamp(min=1)
        return (ce.sum(dim=(1, 2)) / labelled).sum()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=1)

    def decisions(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities.argmax(dim=1)

    def label_text(self, value: torch.Tensor) -> str:
        """A mask in words: the classes it shows."""
        present = [int(c) for c in value.unique() if int(c) != self.ignore_index]
        return "+".join(self.class_names[c] for c in present) or "(none)"

    @property
    def has_report(self) -> bool:
        return True

    def write_report(self, request: ReportRequest) -> Path:
        """Per-class IoU, the pixel confusion matrix and the worst images (lowest IoU)."""
        from finetune.engine.segmentation_report import write_segmentation_report

        return write_segmentation_report(request)

    def pictures(self, predictions: Predictions, images: int, epoch: int) -> dict[str, Any]:
        from finetune.records.overlays import overlay_grid, pixel_confusion_image

        pictures = {"val/confusion_matrix": pixel_confusion_image(predictions, epoch, self)}
        if images:
            pictures["val/overlays"] = overlay_grid(predictions, images, self.ignore_index)
        return pictures

    def kept_outputs(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The predicted masks, (N, H, W) uint8 where the classes fit: C floats a pixel for a
        whole folder of inputs would not fit in memory."""
        masks = self.decisions(probabilities)
        return masks.to(torch.uint8) if self.num_outputs <= 256 else masks

    def prediction_rows(
        self, names: list[str], masks: torch.Tensor, top_k: int
    ) -> list[dict[str, Any]]:
        """file, then the fraction of the image's pixels predicted as each class."""
        rows = []
        for name, mask in zip(names, masks, strict=True):
            counts = torch.bincount(mask.flatten().long(), minlength=self.num_outputs)
            fractions = (counts.float() / counts.sum()).tolist()
            row: dict[str, Any] = {"file": name}
            row.update(
                {
                    f"pixels_{c}": round(f, 6)
                    for c, f in zip(self.class_names, fractions, strict=True)
                }
            )
            rows.append(row)
        return rows

    def unmirror(self, outputs: torch.Tensor) -> torch.Tensor:
        """A mask moves with its image: (N, C, H, W) mirrored back along W."""
        return outputs.flip(-1)

    def prediction_pictures(
        self,
        out: Path,
        files: list[Path],
        rows: list[dict[str, Any]],
        masks: torch.Tensor,
        settings: DictConfig,
    ) -> dict[str, Path]:
        """A mask PNG and an overlay per input, and a contact sheet of the overlays."""
        from finetune.records.prediction_masks import write_mask_files

        names = [row["file"] for row in rows]
        return write_mask_files(
            out, files, names, masks, self.num_outputs, self.label_text, settings.sheet_images
        )
