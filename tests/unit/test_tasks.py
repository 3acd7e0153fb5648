"""Tasks and the loss group: what differs between kinds of learning, behind one interface."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_train
from omegaconf import OmegaConf

from finetune.engine.state import FORMAT_VERSION, check_format
from finetune.safety.errors import FinetuneError
from finetune.tasks.base import build_task
from finetune.tasks.classification import Classification
from finetune.tasks.losses import build_loss, inverse_frequency
from finetune.tasks.multilabel import MultiLabel

NAMES = ["a", "b", "c"]


def test_the_default_task_is_classification_with_cross_entropy(tmp_path):
    cfg = compose_train(tmp_path)
    task = build_task(cfg, NAMES)
    assert isinstance(task, Classification)
    assert cfg.monitor == "val/acc" and cfg.mode == "max"
    assert isinstance(task.loss(train=None), torch.nn.CrossEntropyLoss)


def test_multilabel_brings_its_loss_and_monitor_and_an_override_still_wins(tmp_path):
    cfg = compose_train(tmp_path, "task=multilabel")
    assert isinstance(build_task(cfg, NAMES), MultiLabel)
    assert cfg.loss._target_ == "torch.nn.BCEWithLogitsLoss"
    assert cfg.monitor == "val/map"
    cfg = compose_train(tmp_path, "task=multilabel", "loss=cross_entropy", "monitor=val/loss")
    assert cfg.loss._target_ == "torch.nn.CrossEntropyLoss" and cfg.monitor == "val/loss"


def test_a_target_that_is_not_a_task_is_refused(tmp_path):
    cfg = compose_train(tmp_path, "task._target_=torch.nn.Linear")
    with pytest.raises(FinetuneError, match="is not a finetune Task"):
        build_task(cfg, NAMES)


def test_auto_class_weights_are_inverse_frequency():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    weights = inverse_frequency(labels, 3)
    assert weights.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    rows = torch.tensor([[1, 0], [1, 1], [1, 0], [0, 1]])
    assert inverse_frequency(rows, 2).tolist() == pytest.approx([5 / 6, 5 / 4])  # 5 labels


def test_auto_class_weights_reach_the_loss_and_a_missing_class_is_refused():
    cfg = OmegaConf.create(
        {"_target_": "torch.nn.CrossEntropyLoss", "label_smoothing": 0.1, "class_weights": "auto"}
    )
    loss = build_loss(cfg, 3, lambda: torch.tensor([0, 0, 1, 2]))
    assert loss.weight.tolist() == pytest.approx([4 / 6, 4 / 3, 4 / 3])
    assert loss.label_smoothing == 0.1
    with pytest.raises(FinetuneError, match=r"classes \[2\] have no training samples"):
        build_loss(cfg, 3, lambda: torch.tensor([0, 1, 1]))


def test_class_weights_as_a_list_must_have_one_per_class():
    cfg = OmegaConf.create({"_target_": "torch.nn.BCEWithLogitsLoss", "class_weights": [1, 2, 3]})
    assert build_loss(cfg, 3, lambda: None).weight.tolist() == [1, 2, 3]
    with pytest.raises(FinetuneError, match="a list of 2 numbers"):
        build_loss(cfg, 2, lambda: None)


def test_labels_are_counted_only_when_auto_asks():
    cfg = OmegaConf.create({"_target_": "timm.loss.SoftTargetCrossEntropy", "class_weights": None})

    def never() -> torch.Tensor:
        raise AssertionError("labels were read")

    assert type(build_loss(cfg, 3, never)).__name__ == "SoftTargetCrossEntropy"


def test_classification_decides_by_argmax_and_lists_the_top_k(tmp_path):
    task = build_task(compose_train(tmp_path), NAMES)
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    probs = task.probabilities(logits)
    assert probs.sum(1).tolist() == pytest.approx([1, 1])
    assert task.decisions(probs).tolist() == [1, 0]
    rows = task.prediction_rows(["x.png", "y.png"], probs, top_k=2)
    assert [r["label_1"] for r in rows] == ["b", "a"] and rows[0]["label_2"] == "c"
    assert rows[0]["prob_1"] > rows[0]["prob_2"]
    assert task.loss_sum(logits, torch.tensor([1, 0])).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0]), reduction="sum").item()
    )


def test_multilabel_decides_by_threshold_and_scores_map(tmp_path):
    task = build_task(compose_train(tmp_path, "task=multilabel", "task.threshold=0.6"), NAMES)
    probs = task.probabilities(torch.tensor([[2.0, 0.0, -2.0], [-3.0, -3.0, -3.0]]))
    decided = task.decisions(probs)
    assert decided.tolist() == [[1, 0, 0], [0, 0, 0]]  # sigmoid(0) = 0.5 < 0.6
    assert [task.label_text(d) for d in decided] == ["a", "(none)"]
    metrics = task.metrics()
    metrics.update(probs, task.metric_targets(torch.tensor([[1.0, 0, 0], [0, 1, 0]])))
    assert set(metrics.compute()) == {"map", "f1_macro", "f1_micro", "exact_match"}
    rows = task.prediction_rows(["x"], probs[:1], top_k=1)
    assert rows[0]["labels"] == "a" and set(rows[0]) == {
        "file",
        "labels",
        "prob_a",
        "prob_b",
        "prob_c",
    }


def test_a_checkpoint_of_another_format_is_refused_with_what_to_do():
    check_format({"format_version": FORMAT_VERSION}, "x.pt")
    with pytest.raises(FinetuneError, match=r"format 1 .*model.pretrained=x.pt"):
        check_format({"format_version": 1}, "x.pt")
    with pytest.raises(FinetuneError, match="newer than this code"):
        check_format({"format_version": FORMAT_VERSION + 1}, "x.pt")


def test_each_multilabel_metric_reports_its_own_figure_after_a_perfect_first_batch(tmp_path):
    """torchmetrics merges metrics whose states match after the first update unless told which
    share: a perfect first batch made top-5 and top-1 match, and F1 then reported top-5 figures.
    (Classification and segmentation count their own confusion matrix now, and are held to
    torchmetrics' figures in test_confusion_metrics.py; multi-label keeps a collection.)"""
    task = build_task(compose_train(tmp_path, "task=multilabel"), [str(i) for i in range(10)])
    collection = task.metrics()
    alone = {name: metric.clone() for name, metric in collection.items(keep_base=True)}
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 2, (8, 10), generator=generator)
    batches = [(targets.float(), targets)]
    for _ in range(3):
        batches.append((torch.rand((8, 10), generator=generator), targets))
    for scores, target in batches:
        collection.update(scores, target)
        for metric in alone.values():
            metric.update(scores, target)
    together = collection.compute()
    for name, metric in alone.items():
        expected = metric.compute()
        expected = expected if isinstance(expected, dict) else {name: expected}
        for key, value in expected.items():
            assert torch.allclose(together[key], value), (key, together[key], value)
