"""The logger interface: which backends the `logger` group builds, bad settings, CSV, and
TensorBoard's records read back through tensorboard's EventAccumulator."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import compose_train
from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from finetune.records.loggers import CSVLogger, Loggers, build_loggers
from finetune.records.loggers.tensorboard_logger import TensorBoardLogger
from finetune.safety.errors import FinetuneError

REPO_ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["zero", "one", "two", "three"]


def compose_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """conf/train.yaml as train.py composes it, every path inside tmp_path."""
    run_dir = f"paths.output_dir={tmp_path / 'run'}"
    return compose_train(tmp_path, run_dir, "model=test_resnet", *overrides)


def backend_names(loggers: Loggers) -> list[str]:
    return [type(backend).__name__ for backend in loggers.backends]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("logger=none", ["CSVLogger"]),
        ("logger=csv", ["CSVLogger"]),
        ("logger=tensorboard", ["CSVLogger", "TensorBoardLogger"]),
        ("logger=[csv,tensorboard]", ["CSVLogger", "TensorBoardLogger"]),
        ("logger=default", ["CSVLogger", "TensorBoardLogger", "WandbLogger"]),
    ],
)
def test_the_logger_group_chooses_the_backends(
    tmp_path: Path, choice: str, expected: list[str]
) -> None:
    loggers = build_loggers(compose_cfg(tmp_path, choice), tmp_path / "run", is_main=True)
    try:
        assert backend_names(loggers) == expected
    finally:
        loggers.finish("completed")


IMPORTS_PROBE = """
import sys
from pathlib import Path
from hydra import compose, initialize_config_dir
from finetune.records.loggers import build_loggers
from finetune.resolvers import register_resolvers
register_resolvers()
tmp = Path({tmp!r})
with initialize_config_dir(config_dir={conf!r}, version_base="1.3"):
    cfg = compose("train", overrides=[f"paths.output_dir={{tmp}}", {choice!r}])
build_loggers(cfg, tmp / "run", is_main=True).finish("completed")
print("wandb" in sys.modules, "torch.utils.tensorboard" in sys.modules)
"""


@pytest.mark.parametrize(
    ("choice", "imported"), [("logger=csv", "False False"), ("logger=tensorboard", "False True")]
)
def test_a_backend_is_imported_only_when_enabled(
    tmp_path: Path, choice: str, imported: str
) -> None:
    code = IMPORTS_PROBE.format(conf=str(REPO_ROOT / "conf"), tmp=str(tmp_path), choice=choice)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == imported


def test_only_rank_0_writes(tmp_path: Path) -> None:
    loggers = build_loggers(compose_cfg(tmp_path), tmp_path / "run", is_main=False)
    loggers.log_metrics({"train/loss": 1.0}, 1)
    loggers.log_epoch({"epoch": 1, "train/loss": 1.0})
    loggers.finish("completed")
    assert loggers.backends == [] and loggers.wandb_run_id is None
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "setting",
    [
        "logger.tensorboard.histogram_every_n_epochs=-1",
        "logger.tensorboard.histogram_every_n_epochs=1.5",
        "logger.tensorboard.images=-3",
        "logger.tensorboard.pr_curve_classes=-1",
        "logger.wandb.images=-1",
        "logger.wandb.mode=sometimes",
        "logger.wandb.timeout=0",
    ],
)
def test_a_bad_logger_setting_is_an_error_naming_it(tmp_path: Path, setting: str) -> None:
    cfg = compose_cfg(tmp_path, setting)
    with pytest.raises(FinetuneError, match=setting.split("=")[0].replace(".", r"\.")):
        build_loggers(cfg, tmp_path / "run", is_main=True)
    assert not (tmp_path / "run" / "wandb").exists()


def test_an_unwritable_run_directory_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    run_dir = blocker / "run"
    with pytest.raises(FinetuneError, match=f"run directory {run_dir}"):
        build_loggers(compose_cfg(tmp_path, "logger=csv"), run_dir, is_main=True)


def test_finish_closes_once_and_is_cancelled_at_exit(tmp_path: Path) -> None:
    loggers = build_loggers(compose_cfg(tmp_path, "logger=csv"), tmp_path / "run", True)
    calls: list[str] = []
    loggers.backends[0].finish = calls.append  # type: ignore[method-assign]
    loggers.finish("completed")
    loggers.finish("failed")
    assert calls == ["completed"]


def test_csv_keeps_its_columns_and_draws_curves_at_the_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "metrics.csv"
    logger = CSVLogger(path, "val/acc")
    logger.log_epoch({"epoch": 1, "train/loss": 2.0, "val/loss": 2.1, "val/acc": 0.25})
    logger.log_epoch({"epoch": 2, "train/loss": 1.0, "val/acc": 0.5, "surprise": 3.0})
    # A resumed run appends under the same header.
    CSVLogger(path, "val/acc").log_epoch(
        {"epoch": 3, "train/loss": 0.5, "val/loss": 0.9, "val/acc": 0.75}
    )
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["epoch", "train/loss", "val/loss", "val/acc"]
    assert rows[1:] == [
        ["1", "2", "2.1", "0.25"],
        ["2", "1", "", "0.5"],
        ["3", "0.5", "0.9", "0.75"],
    ]
    assert "surprise" in caplog.text
    logger.finish("completed")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def tensorboard_cfg(**changes: object) -> DictConfig:
    from omegaconf import OmegaConf

    settings = OmegaConf.load(REPO_ROOT / "conf" / "logger" / "tensorboard.yaml").tensorboard
    settings.merge_with(changes)
    return settings


def fake_epochs(loggers: Loggers, epochs: int) -> torch.nn.Module:
    """What the loop does: train steps, a validation pass through evaluate(), the records."""
    from torch.utils.data import DataLoader, TensorDataset
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy

    from finetune.engine.loop import evaluate
    from finetune.tasks.classification import Classification

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=len(CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, targets = torch.randn(24, 3, 32, 32), torch.arange(24) % len(CLASSES)
    loader = DataLoader(TensorDataset(images, targets), batch_size=8)
    metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes=len(CLASSES))})
    task = Classification(OmegaConf.create({}), CLASSES)
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            step += 1
            loggers.log_metrics({"train/loss": loss.item()}, step)
        samples = loggers.predictions(model, task, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        val = evaluate(model, loader, task, metrics, torch.device("cpu"), "val", None, samples)
        loggers.log_metrics(val, step)
        loggers.log_predictions(samples, epoch, step)
        loggers.log_histograms(model, epoch, step)
    return model


def test_tensorboard_records_read_back(tmp_path: Path) -> None:
    settings = tensorboard_cfg(
        histogram_every_n_epochs=2, images=6, pr_curve_classes=3, graph=True, embedding_samples=10
    )
    loggers = Loggers([TensorBoardLogger(tmp_path, settings)])
    model = fake_epochs(loggers, epochs=2)
    hparams = {"model": "test_resnet", "lr": 0.01, "classes": [1, 2]}
    loggers.log_hparams(hparams, {"val/acc": 0.5, "best/val/acc": 0.75, "test/acc": 0.625})
    loggers.finish("completed")

    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("val/acc")] == [3, 6]
    # Histograms every 2 epochs: only at the end of epoch 2, weights and last gradients.
    assert "weights/fc.weight" in tags["histograms"] and "gradients/fc.weight" in tags["histograms"]
    assert [e.step for e in events.Histograms("gradients/fc.weight")] == [6]
    assert events.Histograms("weights/fc.weight")[0].histogram_value.num == model.fc.weight.numel()
    grid = events.Images("val/images")
    assert [e.step for e in grid] == [3, 6]
    assert (grid[0].width, grid[0].height) > (300, 100)  # 6 tiles of 96 px, with captions
    assert [e.step for e in events.Images("val/confusion_matrix")] == [3, 6]
    assert {"pr_curve/zero", "pr_curve/one", "pr_curve/two"} <= set(tags["tensors"])
    assert "pr_curve/three" not in tags["tensors"]
    assert tags["graph"]
    assert (tmp_path / "projector_config.pbtxt").is_file()

    # add_hparams writes into the same directory: the HParams tab's session and its metrics.
    hparam_events = EventAccumulator(str(tmp_path))
    hparam_events.Reload()
    content = hparam_events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
    assert b"test_resnet" in content["_hparams_/session_start_info"]
    assert hparam_events.Scalars("hparam/best/val/acc")[0].value == 0.75
    assert hparam_events.Scalars("hparam/test/acc")[0].value == 0.625


def test_tensorboard_with_histograms_off_writes_none(tmp_path: Path) -> None:
    settings = tensorboard_cfg(histogram_every_n_epochs=0, images=0, confusion_matrix=False)
    loggers = Loggers([TensorBoardLogger(tmp_path, settings)])
    fake_epochs(loggers, epochs=1)
    loggers.finish("completed")
    events = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "images": 0})
    events.Reload()
    assert events.Tags()["histograms"] == [] and events.Tags()["images"] == []
    assert "pr_curve/zero" in events.Tags()["tensors"]


def test_a_resumed_tensorboard_hides_what_a_crashed_run_wrote_after_its_checkpoint(
    tmp_path: Path,
) -> None:
    settings = tensorboard_cfg()
    crashed = TensorBoardLogger(tmp_path, settings)
    for step in range(1, 9):
        crashed.log_metrics({"train/loss": 1.0}, step)
    crashed.finish("failed")
    resumed = TensorBoardLogger(tmp_path, settings, resume_step=5)  # last.pt was at step 5
    for step in range(6, 9):
        resumed.log_metrics({"train/loss": 0.5}, step)
    resumed.finish("completed")
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    steps = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert steps == [(s, 1.0) for s in range(1, 6)] + [(s, 0.5) for s in range(6, 9)]
