"""task=segmentation: what it brings (loss, model, data, monitor), and its metrics and
evaluation loss leave ignore_index pixels out."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_train

from finetune.tasks.base import build_task
from finetune.tasks.loss_sum import LossSum
from finetune.tasks.segmentation import Segmentation

NAMES = ["background", "a", "b"]


def test_segmentation_brings_its_loss_model_data_and_monitor_and_overrides_win(tmp_path):
    cfg = compose_train(tmp_path, "task=segmentation")
    task = build_task(cfg, NAMES)
    assert isinstance(task, Segmentation) and task.has_report
    assert (cfg.model.source, cfg.data.name, cfg.monitor) == ("smp", "digit_canvases", "val/miou")
    assert cfg.data.inputs == "mask"  # predict resizes the whole image, as evaluation does
    assert isinstance(task.loss(train=None), LossSum)
    cfg = compose_train(tmp_path, "task=segmentation", "model=fpn", "loss=dice")
    assert cfg.model.name == "FPN" and cfg.loss._target_.endswith("DiceLoss")
    assert build_task(compose_train(tmp_path), NAMES).has_report  # classification's report


def test_ignored_pixels_count_in_no_metric_and_no_loss(tmp_path):
    task = build_task(compose_train(tmp_path, "task=segmentation"), NAMES)
    targets = torch.tensor([[[0, 1], [2, 255]]])
    logits = torch.full((1, 3, 2, 2), -10.0)
    for (row, col), label in {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 1}.items():
        logits[0, label, row, col] = 10.0
    metrics = task.metrics()
    metrics.update(task.probabilities(logits), targets)
    results = {k: float(v) for k, v in metrics.compute().items()}
    assert results["miou"] == pytest.approx(1.0) and results["pixel_acc"] == pytest.approx(1.0)
    assert {"iou_background", "iou_a", "iou_b"} <= set(results)
    # The evaluation loss: each image's mean over its labelled pixels (three here), the ignored
    # one left out: uniform logits cost ln 3 per labelled pixel, so the image's mean is ln 3.
    uniform = torch.zeros(1, 3, 2, 2)
    assert float(task.loss_sum(uniform, targets)) == pytest.approx(float(torch.tensor(3.0).log()))


def test_the_report_s_pixel_counts_give_torchmetrics_per_class_iou():
    """Labelled pixels only, and 0 for a class neither true nor predicted, as test/iou_<class>."""
    from torchmetrics.classification import MulticlassJaccardIndex

    from finetune.engine.segmentation_report import pixel_counts
    from finetune.tasks.confusion_metrics import Counts, iou_per_class, mean_iou

    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 3, (4, 8, 8), generator=generator)
    targets[:, :2] = 255  # ignored
    preds = torch.randint(0, 3, (4, 8, 8), generator=generator)
    targets[targets == 2], preds[preds == 2] = 0, 1  # class 2: in no mask
    expected = MulticlassJaccardIndex(num_classes=4, average="none", ignore_index=255)(
        preds, targets
    )
    counts = Counts.of(pixel_counts(targets, preds, 4, 255), ignore_index=255)
    assert iou_per_class(counts).tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    miou = MulticlassJaccardIndex(num_classes=4, average="macro", ignore_index=255)
    assert float(mean_iou(counts)) == pytest.approx(float(miou(preds, targets)), abs=1e-6)
    assert counts.confusion.sum() == (targets != 255).sum()


def test_predict_keeps_masks_not_probabilities_and_rows_count_their_pixels(tmp_path):
    """A folder of inputs would need C floats a pixel; predict keeps one byte a pixel."""
    task = build_task(compose_train(tmp_path, "task=segmentation"), NAMES)
    probabilities = torch.rand(2, 3, 4, 4).softmax(dim=1)
    kept = task.kept_outputs(probabilities)
    assert kept.dtype == torch.uint8 and kept.shape == (2, 4, 4)
    assert torch.equal(kept.long(), probabilities.argmax(dim=1))
    rows = task.prediction_rows(["x.png", "y.png"], kept, top_k=1)
    for row, mask in zip(rows, kept, strict=True):
        shares = [row[f"pixels_{name}"] for name in NAMES]
        expected = [float((mask == c).float().mean()) for c in range(3)]
        assert shares == pytest.approx(expected, abs=1e-6)
