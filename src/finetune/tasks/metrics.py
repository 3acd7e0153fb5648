"""Classification metrics (torchmetrics), named as DESIGN.md says: val/acc, val/f1, ..."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score


def build_metrics(num_classes: int) -> MetricCollection:
    """Top-1 accuracy, macro F1, and top-5 accuracy when there are more than 5 classes.

    With 5 classes or fewer top-5 accuracy is 1 by definition, so it is left out.
    """
    metrics = {
        "acc": MulticlassAccuracy(num_classes=num_classes, top_k=1, average="micro"),
        "f1": MulticlassF1Score(num_classes=num_classes, average="macro"),
    }
    if num_classes > 5:
        metrics["acc5"] = MulticlassAccuracy(num_classes=num_classes, top_k=5, average="micro")
    return MetricCollection(metrics)
