"""The confusion-matrix metrics give torchmetrics' figures, its rules for absent classes included.

torchmetrics is the oracle here: classification and segmentation count their own confusion
matrix (tasks/confusion_metrics.py: importing torchmetrics cost 4 s of a short run), and these
tests hold them to the library's numbers on batches with missing and never-predicted classes.
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose_train
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from finetune.tasks.base import build_task

NAMES = [str(i) for i in range(10)]


def scores_and_targets(
    shape: tuple[int, ...], classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random probabilities over `classes` and targets where class 3 is neither true nor
    predicted and class `classes - 2` is true but never predicted (so every averaging rule for
    an absent class is exercised)."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, classes, (shape[0], *shape[2:]), generator=generator)
    targets[targets == 3] = 1
    scores = torch.rand(shape, generator=generator)
    scores[:, [3, classes - 2]] = 0
    return scores / scores.sum(dim=1, keepdim=True), targets


def computed(task, batches) -> dict[str, float]:
    metrics = task.metrics()
    for scores, targets in batches:
        metrics.update(scores, targets)
    return {k: float(v) for k, v in metrics.compute().items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_torchmetrics(tmp_path, seed):
    task = build_task(compose_train(tmp_path), NAMES)
    batches = [scores_and_targets((16, 10), 10, seed + 10 * i) for i in range(3)]
    first_targets = batches[0][1]  # predicted right: top-1 and top-5 agree on the first batch
    batches[0] = (torch.nn.functional.one_hot(first_targets, 10).float(), first_targets)
    scores, targets = (torch.cat(column) for column in zip(*batches, strict=True))
    expected = {
        "acc": MulticlassAccuracy(10, average="micro"),
        "acc5": MulticlassAccuracy(10, top_k=5, average="micro"),
        "balanced_acc": MulticlassAccuracy(10, average="macro"),
        "f1": MulticlassF1Score(10, average="macro"),
        "f1_macro": MulticlassF1Score(10, average="macro"),
    }
    got = computed(task, batches)
    assert list(got) == sorted(expected)  # the names, in the order the epoch line shows them
    for name, metric in expected.items():
        assert got[name] == pytest.approx(float(metric(scores, targets)), abs=1e-6), name


@pytest.mark.parametrize("ignore_index", [255, 0])
def test_segmentation_metrics_equal_torchmetrics(tmp_path, ignore_index):
    """Ignored pixels count nowhere; an ignore_index that names a class leaves the mean IoU."""
    cfg = compose_train(tmp_path, "task=segmentation", f"data.ignore_index={ignore_index}")
    task = build_task(cfg, ["background", "a", "b", "c"])
    scores, targets = scores_and_targets((4, 4, 8, 8), 4, seed=0)
    targets[:, :2] = ignore_index
    keyword = {"num_classes": 4, "ignore_index": ignore_index}
    expected = {
        "miou": MulticlassJaccardIndex(average="macro", **keyword)(scores, targets),
        "dice": MulticlassF1Score(average="macro", **keyword)(scores, targets),
        "pixel_acc": MulticlassAccuracy(average="micro", **keyword)(scores, targets),
    }
    per_class = MulticlassJaccardIndex(average="none", **keyword)(scores, targets)
    expected |= {f"iou_{name}": iou for name, iou in zip(task.safe_names(), per_class, strict=True)}
    got = computed(task, [(scores[:2], targets[:2]), (scores[2:], targets[2:])])
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(float(value), abs=1e-6), name


def test_top_5_accuracy_is_left_out_with_5_classes_or_fewer(tmp_path):
    task = build_task(compose_train(tmp_path), NAMES[:5])
    got = computed(task, [scores_and_targets((8, 5), 5, seed=0)])
    assert "acc5" not in got and got["acc"] <= 1


def test_a_split_with_no_samples_reports_zeros_not_nan(tmp_path):
    task = build_task(compose_train(tmp_path), NAMES)
    got = computed(task, [])
    assert got and all(value == 0 for value in got.values())
