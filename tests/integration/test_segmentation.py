"""task=segmentation end to end on the embedded digit canvases: one tiny run trains, records
overlays and per-class IoU, resumes bitwise, evaluates to its own test metrics and exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_script

SEGMENTATION = (
    "task=segmentation",
    "model.encoder=tu-test_resnet",
    "model.encoder_weights=null",
    "model.pretrained=false",
    "+model.kwargs.decoder_channels=[8,8,8,8,8]",
    "data.image_size=32",
    "data.digit_size=12",
    "data.canvases_per_digit=0.1",
    "data.batch_size=16",
    "trainer.limit_train_batches=3",
    "trainer.progress_bar=false",
    "logger=tensorboard",
    "logger.tensorboard.images=4",
    "logger.tensorboard.histogram_every_n_epochs=0",
    "logger.tensorboard.pr_curve_classes=0",
)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory, train_in) -> Path:
    """Two epochs straight: the run every test below reads (and the resume's reference)."""
    base = tmp_path_factory.mktemp("segmentation")
    result = train_in(base, *SEGMENTATION, "trainer.epochs=2")
    assert result.returncode == 0, result.output[-3000:]
    return result.run_dir


def test_it_monitors_miou_and_records_per_class_iou(segmentation_run):
    summary = json.loads((segmentation_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["monitor"] == "val/miou"
    classes = ["background", *map(str, range(10))]
    expected = {"test/loss", "test/miou", "test/dice", "test/pixel_acc"}
    expected |= {f"test/iou_{c}" for c in classes}
    assert set(summary["test"]) == expected
    assert all(0.0 <= v <= 1.0 for k, v in summary["test"].items() if k != "test/loss")
    state = load(segmentation_run / "checkpoints/best.pt")
    assert state["config"]["task"]["_target_"] == "finetune.tasks.segmentation.Segmentation"
    assert state["config"]["model"]["source"] == "smp"


def test_tensorboard_shows_overlays_and_the_pixel_confusion_matrix(segmentation_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(segmentation_run / "tensorboard")).Reload()
    images = events.Tags()["images"]
    assert {"val/overlays", "val/confusion_matrix"} <= set(images)
    overlay = events.Images("val/overlays")[-1]
    # 4 rows of image | true | predicted, 32-pixel tiles with 2-pixel padding.
    assert (overlay.width, overlay.height) == (3 * 34 + 2, 4 * 34 + 2)


def test_it_resumes_bitwise(segmentation_run, run_train, tmp_path):
    """The run's epoch-1 checkpoint, resumed in a copy of the run, ends where the run ended."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(segmentation_run, copy)
    (saved,) = (copy / "checkpoints").glob("epoch=001-*.pt")
    epoch_one = shutil.copy(saved, copy / "checkpoints/epoch1.pt")  # no '=' for Hydra to parse
    resumed = run_train(f"resume={epoch_one}", "trainer.epochs=2", run_dir=copy)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "epoch 2/2" in resumed.output and "epoch 1/2" not in resumed.output
    a = load(copy / "checkpoints/last.pt")
    b = load(segmentation_run / "checkpoints/last.pt")
    assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
    assert all(torch.equal(a["model_state_dict"][k], v) for k, v in b["model_state_dict"].items())
    assert a["metrics"] == b["metrics"]


def test_eval_reproduces_the_test_metrics(segmentation_run, tmp_path):
    result = run_script("eval.py", f"ckpt={segmentation_run}", base=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((segmentation_run / "checkpoints/best.eval-test.json").read_text())
    trained = json.loads((segmentation_run / "summary.json").read_text())["test"]
    assert written["metrics"] == pytest.approx(trained, abs=1e-6)


def test_the_torchscript_export_matches_and_outputs_masks(segmentation_run, tmp_path):
    out = tmp_path / "x"
    result = run_script("scripts/export.py", str(segmentation_run), "--out", str(out),
                        "--formats", "torchscript", base=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    exported = torch.jit.load(str(out / "model.torchscript.pt"))
    assert exported(torch.rand(2, 3, 32, 32)).shape == (2, 11, 32, 32)
