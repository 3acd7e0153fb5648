"""The report's numbers (confusion, per-class, top losses, calibration) and its pages."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from finetune.records.calibration import expected_calibration_error, fit_temperature
from finetune.records.report import (
    ReportInputs,
    per_class_rows,
    top_loss_indices,
    write_report,
)
from finetune.records.report_page import write_sweep_page


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_sure_and_wrong():
    # Confidence 0.8 for class 0 everywhere, right 8 times in 10: calibrated.
    logits = torch.log(torch.tensor([[0.8, 0.2]])).repeat(10, 1)
    targets = torch.tensor([0] * 8 + [1] * 2)
    assert expected_calibration_error(logits, targets, 10) == pytest.approx(0.0, abs=1e-6)
    sure_and_wrong = torch.tensor([[20.0, 0.0]]).repeat(10, 1)
    assert expected_calibration_error(sure_and_wrong, torch.ones(10, dtype=torch.long), 10) > 0.99


@pytest.mark.parametrize("bins", [10, 15])
def test_ece_equals_torchmetrics_calibration_error(bins):
    from torchmetrics.functional.classification import multiclass_calibration_error

    generator = torch.Generator().manual_seed(bins)
    logits = torch.randn(500, 7, generator=generator) * 3
    targets = torch.randint(0, 7, (500,), generator=generator)
    expected = multiclass_calibration_error(logits.softmax(dim=1), targets, 7, n_bins=bins)
    assert expected_calibration_error(logits, targets, bins) == pytest.approx(float(expected))


def test_temperature_recovers_the_scale_of_over_confident_logits():
    generator = torch.Generator().manual_seed(0)
    calibrated = torch.randn(4000, 5, generator=generator) * 2
    targets = torch.multinomial(calibrated.softmax(dim=1), 1, generator=generator).squeeze(1)
    over_confident = calibrated * 3
    temperature = fit_temperature(over_confident, targets)
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(over_confident, targets) == temperature  # deterministic
    before = expected_calibration_error(over_confident, targets, 15)
    after = expected_calibration_error(over_confident / temperature, targets, 15)
    assert after < before / 2


def test_per_class_metrics_from_the_confusion_counts():
    counts = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])  # rows true, columns predicted
    rows = per_class_rows(counts, ["a", "b", "c"])
    assert [r["support"] for r in rows] == [4, 4, 0]
    assert rows[0]["precision"] == 1.0 and rows[0]["recall"] == 0.75
    assert rows[1]["precision"] == pytest.approx(2 / 3, abs=1e-6) and rows[1]["recall"] == 0.5
    assert rows[2] == {"class": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert rows[0]["f1"] == pytest.approx(2 * 0.75 / 1.75, abs=1e-6)


def test_top_losses_are_the_most_wrong_first():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.0, 1.0], [2.0, 0.0]])
    targets = torch.tensor([0, 0, 0, 0])
    assert top_loss_indices(logits, targets, 2) == [1, 2]


def fake_inputs(tmp_path: Path, classes: list[str]) -> ReportInputs:
    generator = torch.Generator().manual_seed(0)
    targets = torch.arange(40) % len(classes)
    logits = torch.randn(40, len(classes), generator=generator)
    logits[torch.arange(40), targets] += 1.5
    picture = Image.new("RGB", (8, 8), (200, 30, 30))
    top = top_loss_indices(logits, targets, 6)
    return ReportInputs(
        title="a <b>run</b>",
        split="test",
        class_names=classes,
        logits=logits,
        targets=targets,
        names=[f"test[{i}]" for i in range(40)],
        gallery=[(i, picture) for i in top],
        temperature=1.5,
        calibration_bins=10,
        curves=None,
    )


def test_report_writes_every_part_and_agrees_with_its_inputs(tmp_path):
    classes = ["cat", "dog", "<script>alert(1)</script>"]
    inputs = fake_inputs(tmp_path, classes)
    page = write_report(tmp_path / "report", inputs)
    report = tmp_path / "report"
    names = {p.name for p in report.iterdir()}
    assert {"index.html", "confusion.png", "confusion.csv", "per_class.csv", "top_losses.csv",
            "top_losses.png", "reliability.png", "calibration.json"} <= names  # fmt: skip
    counts = np.loadtxt(report / "confusion.csv", delimiter=",", skiprows=1, dtype=int)
    preds = inputs.logits.argmax(dim=1)
    assert counts.sum() == 40
    assert np.trace(counts) == int((preds == inputs.targets).sum())
    with open(report / "per_class.csv") as handle:
        supports = [int(row["support"]) for row in csv.DictReader(handle)]
    assert supports == counts.sum(axis=1).tolist()
    calibration = json.loads((report / "calibration.json").read_text())
    assert calibration["temperature"] == 1.5 and 0 <= calibration["ece"] <= 1
    html = page.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html  # names are escaped
    assert html.count("data:image/png;base64,") >= 3  # self-contained: pictures inside


def test_sweep_page_shows_every_job_escaped(tmp_path):
    rows = [
        {"job": 1, "status": "completed", "best": 0.9, "overrides": "optimizer.lr=0.1"},
        {"job": 0, "status": "failed", "best": None, "overrides": "a=<b>"},
    ]
    page = write_sweep_page(
        tmp_path / "index.html", "sweep", rows, ["job", "status", "best", "overrides"],
        "val/acc", "max", None,
    )  # fmt: skip
    html = page.read_text()
    assert html.index("optimizer.lr=0.1") < html.index("a=&lt;b&gt;")
    assert "0.9000" in html and "<b>" not in html


@pytest.mark.parametrize(
    ("test_source", "passes"), [("val (there is no DIR/test)", 1), ("test", 2)]
)
def test_the_report_passes_over_val_once_when_the_test_split_is_val(tmp_path, test_source, passes):
    """A folder without test/ reports on its val samples: one pass gives both the temperature's
    logits and the report's, not two over the same images."""
    from omegaconf import OmegaConf

    from finetune.data.splits import Splits
    from finetune.engine.report import val_and_split_outputs
    from finetune.engine.report_request import ReportRequest

    images = torch.randn(6, 3, 4, 4)
    val = torch.utils.data.TensorDataset(images, torch.arange(6) % 2)
    test = torch.utils.data.TensorDataset(images, torch.arange(6) % 2)
    splits = Splits(val, val, test, ["a", "b"], "tensor", test_source)
    seen = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    model.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    cfg = OmegaConf.create({"data": {"batch_size": 6, "num_workers": 0}})
    request = ReportRequest(
        tmp_path, "t", model, splits, "test", None, cfg, torch.device("cpu"), None
    )
    (val_logits, _, _), (logits, targets, indices) = val_and_split_outputs(request)
    assert len(seen) == passes and torch.equal(val_logits, logits)
    assert targets.tolist() == [0, 1, 0, 1, 0, 1] and indices.tolist() == list(range(6))
