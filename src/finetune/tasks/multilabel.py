"""Multi-label classification: any number of labels per image, sigmoid outputs, a threshold.

Targets are 0/1 vectors (one entry per label). The loss is binary cross-entropy on the logits
(conf/loss/bce.yaml); metrics are macro and micro F1 at `task.threshold` and the mean average
precision over labels (threshold-free), the default monitor (`val/map`). Its report is per label
(records/multilabel_report.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from finetune.tasks.base import Task

if TYPE_CHECKING:
    from torchmetrics import MetricCollection

    from finetune.engine.report_request import ReportRequest


class MultiLabel(Task):
    def inputs_and_targets(
        self, batch: Any, device: torch.device, channels_last: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = super().inputs_and_targets(batch, device, channels_last)
        return images, targets.float()  # BCE wants float targets

    def metrics(self) -> MetricCollection:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (
            MultilabelAveragePrecision,
            MultilabelExactMatch,
            MultilabelF1Score,
        )

        n, threshold = self.num_outputs, float(self.cfg.task.threshold)
        return MetricCollection(
            {
                "map": MultilabelAveragePrecision(num_labels=n, average="macro"),
                "f1_macro": MultilabelF1Score(num_labels=n, average="macro", threshold=threshold),
                "f1_micro": MultilabelF1Score(num_labels=n, average="micro", threshold=threshold),
                "exact_match": MultilabelExactMatch(num_labels=n, threshold=threshold),
            },
            compute_groups=False,  # never merged by equal first-batch states (classification.py)
        )

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each sample's BCE averaged over its labels, summed over the batch."""
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        return bce(logits, targets.float(), reduction="none").mean(dim=1).sum()

    def metric_targets(self, targets: torch.Tensor) -> torch.Tensor:
        return targets.long()  # torchmetrics' multilabel metrics want integer targets

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()

    def decisions(self, probabilities: torch.Tensor) -> torch.Tensor:
        return (probabilities >= float(self.cfg.task.threshold)).long()

    def label_text(self, value: torch.Tensor) -> str:
        chosen = [self.class_names[i] for i in value.nonzero().flatten().tolist()]
        return "+".join(chosen) if chosen else "(none)"

    @property
    def has_report(self) -> bool:
        return True

    def write_report(self, request: ReportRequest) -> Path:
        """Per label: precision, recall, F1, AP, TN/FP/FN/TP; top losses; calibration of the
        yes/no decisions (engine/multilabel_report.py)."""
        from finetune.engine.multilabel_report import write_multilabel_report

        return write_multilabel_report(request)

    def prediction_rows(
        self, names: list[str], probabilities: torch.Tensor, top_k: int
    ) -> list[dict[str, Any]]:
        """file, the labels at or over the threshold, then every label's probability."""
        rows = []
        for name, probs in zip(names, probabilities, strict=True):
            row: dict[str, Any] = {"file": name, "labels": self.label_text(self.decisions(probs))}
            row.update(
                {
                    f"prob_{c}": round(float(p), 6)
                    for c, p in zip(self.class_names, probs, strict=True)
                }
            )
            rows.append(row)
        return rows
