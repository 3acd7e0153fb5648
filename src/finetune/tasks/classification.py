"""Single-label classification: one class per image, softmax, cross-entropy (the default task)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from finetune.tasks.base import Task
from finetune.tasks.confusion_metrics import (
    ConfusionMetrics,
    accuracy,
    balanced_accuracy,
    f1_macro,
    top_k_accuracy,
)

if TYPE_CHECKING:
    from finetune.records.predictions import Predictions


class Classification(Task):
    """Accuracy (top-1, balanced, top-5), macro F1; a labelled grid and a confusion matrix."""

    def metrics(self) -> ConfusionMetrics:
        """Top-1 accuracy, macro F1, balanced accuracy, and top-5 accuracy beyond 5 classes.

        Balanced accuracy (the mean of per-class recalls) and macro F1 weigh every class alike,
        so an imbalanced run can monitor them (monitor=val/balanced_acc) where plain accuracy
        rewards predicting the big classes. `f1` stays for the runs that read it; `f1_macro` is
        the same number under the name that says how it averages. With 5 classes or fewer
        top-5 accuracy is 1 by definition, so it is left out.
        """
        reductions = {
            "acc": accuracy,
            "f1": f1_macro,
            "f1_macro": f1_macro,
            "balanced_acc": balanced_accuracy,
        }
        top_k = 5 if self.num_outputs > 5 else 0
        if top_k:
            reductions["acc5"] = top_k_accuracy
        return ConfusionMetrics(self.num_outputs, reductions, top_k=top_k)

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(dim=1)

    def decisions(self, probabilities: torch.Tensor) -> torch.Tensor:
        return probabilities.argmax(dim=1)

    def label_text(self, value: torch.Tensor) -> str:
        return self.class_names[int(value)]

    @property
    def has_report(self) -> bool:
        return True

    def pictures(self, predictions: Predictions, images: int, epoch: int) -> dict[str, Any]:
        from finetune.records.visuals import confusion_image

        pictures = super().pictures(predictions, images, epoch)
        pictures["val/confusion_matrix"] = confusion_image(predictions, epoch)
        return pictures

    def prediction_rows(
        self, names: list[str], probabilities: torch.Tensor, top_k: int
    ) -> list[dict[str, Any]]:
        """file, then the top-k classes and their probabilities, best first."""
        k = min(top_k, probabilities.shape[1])
        values, indices = probabilities.topk(k, dim=1)
        rows = []
        for name, probs, classes in zip(names, values.tolist(), indices.tolist(), strict=True):
            row: dict[str, Any] = {"file": name}
            for rank, (p, c) in enumerate(zip(probs, classes, strict=True), start=1):
                row[f"label_{rank}"] = self.class_names[c]
                row[f"prob_{rank}"] = round(p, 6)
            rows.append(row)
        return rows
