"""W&B: an offline run in <run>/wandb read back, resume by id, and failures that never stop
training (no credentials, an invalid key online, an error while logging)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import compose_train
from omegaconf import DictConfig, OmegaConf
from wandb_records import read_run

from finetune.records.loggers import build_loggers
from finetune.records.loggers import wandb_logger as module
from finetune.records.predictions import Predictions
from finetune.tasks.classification import Classification

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key, no netrc, offline unless a test says otherwise."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_MODE", "offline")


def compose_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    """conf/train.yaml as train.py composes it, every path inside tmp_path."""
    run_dir = f"paths.output_dir={tmp_path / 'run'}"
    return compose_train(tmp_path, run_dir, "model=test_resnet", "logger=wandb", *overrides)


def predictions() -> Predictions:
    names = ["a", "b", "c"]
    task = Classification(OmegaConf.create({}), names)
    collected = Predictions(
        torch.nn.Identity(), names, task.label_text, task.pictures, (0.5,) * 3, (0.5,) * 3, 4, 0, 0
    )
    targets = torch.tensor([0, 1, 2, 1])
    probs = torch.eye(3)[targets]
    collected.update(torch.zeros(4, 3, 8, 8), targets, probs, task.decisions(probs))
    collected.close()
    return collected


def test_an_offline_run_records_config_history_pictures_and_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "run"
    loggers = build_loggers(compose_cfg(tmp_path), run_dir, is_main=True)
    run_id = loggers.wandb_run_id
    assert run_id
    loggers.log_metrics({"train/loss": 2.0}, 5)
    loggers.log_metrics({"train/loss": 1.5, "val/acc": 0.5, "lr": 0.1}, 10)
    loggers.log_predictions(predictions(), 1, 10)
    loggers.log_hparams({"lr": 0.1}, {"best/val/acc": 0.75, "test/acc": 0.7})
    loggers.finish("completed")

    run = read_run(run_dir)
    assert run.run_id == run_id and run.path.is_relative_to(run_dir / "wandb")
    assert run.config["model"]["name"] == "test_resnet"
    assert run.config["optimizer"]["lr"] > 0  # the whole resolved config
    rows = {row["_step"]: row for row in run.history}
    assert rows[5]["train/loss"] == 2.0 and rows[10]["val/acc"] == 0.5
    for tag in ("val/images", "val/confusion_matrix"):
        assert rows[10][f"{tag}/_type"] == "image-file"
        picture = run.path.parent / "files" / rows[10][f"{tag}/path"]
        assert picture.read_bytes()[:4] == b"\x89PNG"
    assert run.summary["best/val/acc"] == 0.75 and run.summary["test/acc"] == 0.7
    assert f"wandb sync {run.path.parent}" in caplog.text


def test_a_run_id_continues_that_run(tmp_path: Path) -> None:
    loggers = build_loggers(compose_cfg(tmp_path), tmp_path / "run", True, wandb_run_id="abc123")
    assert loggers.wandb_run_id == "abc123"
    loggers.finish("completed")
    assert read_run(tmp_path / "run").run_id == "abc123"


def test_the_best_checkpoint_becomes_an_artifact_on_request(tmp_path: Path) -> None:
    cfg = compose_cfg(tmp_path, "logger.wandb.log_checkpoint=true")
    loggers = build_loggers(cfg, tmp_path / "run", True)
    best = tmp_path / "run" / "best.pt"
    torch.save({"epoch": 1}, best)
    loggers.log_checkpoint(best, {"model": "test_resnet"})
    loggers.finish("completed")
    log = (tmp_path / "run" / "wandb" / "latest-run").resolve()
    artifact = [r for r in read_records(log) if r.WhichOneof("record_type") == "artifact"]
    assert artifact and artifact[0].artifact.type == "model"
    assert artifact[0].artifact.manifest.contents[0].path == "best.pt"


def read_records(offline_run: Path) -> list:
    from wandb_records import records

    return records(next(offline_run.glob("run-*.wandb")))


def test_online_without_credentials_runs_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    loggers = build_loggers(compose_cfg(tmp_path), tmp_path / "run", True)
    assert "no credentials" in caplog.text
    loggers.finish("completed")
    assert read_run(tmp_path / "run").run_id == loggers.wandb_run_id


def test_an_unreachable_server_is_found_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: refused
    assert "unreachable" in module.why_offline(timeout=5)


def test_credentials_come_from_the_environment_or_netrc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not module.has_credentials()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine wandb.example.org login user password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert module.has_credentials()


def test_an_invalid_key_online_falls_back_to_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "invalid")
    monkeypatch.setattr(module, "why_offline", lambda timeout: None)  # as if the server answered
    loggers = build_loggers(compose_cfg(tmp_path), tmp_path / "run", True)
    assert "W&B init failed (online)" in caplog.text
    loggers.log_metrics({"train/loss": 1.0}, 1)
    loggers.finish("completed")
    assert read_run(tmp_path / "run").history[0]["train/loss"] == 1.0


def test_an_error_while_logging_is_one_warning_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loggers = build_loggers(compose_cfg(tmp_path, "logger=[csv,wandb]"), tmp_path / "run", True)
    wandb_backend = loggers.backends[1]

    def broken(*args: object, **kwargs: object) -> None:
        raise ConnectionError("the network went away")

    wandb_backend.run.log = broken
    loggers.log_metrics({"train/loss": 1.0}, 1)
    loggers.log_metrics({"train/loss": 0.5}, 2)
    loggers.log_epoch({"epoch": 1, "train/loss": 0.5})
    loggers.finish("completed")
    warnings = [r for r in caplog.records if "W&B log_metrics failed" in r.getMessage()]
    assert len(warnings) == 1 and "the network went away" in warnings[0].getMessage()
    assert (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1] == "1,0.5"


def test_wandb_disabled_builds_no_run(tmp_path: Path) -> None:
    loggers = build_loggers(compose_cfg(tmp_path, "logger.wandb.mode=disabled"), tmp_path, True)
    loggers.log_metrics({"train/loss": 1.0}, 1)
    loggers.finish("completed")
    assert loggers.wandb_run_id is None and not (tmp_path / "wandb").exists()


def test_segmentation_passes_get_w_and_b_mask_overlays(tmp_path: Path) -> None:
    """val/masks: each image with its true and predicted masks as W&B mask layers."""
    from finetune.tasks.segmentation import Segmentation

    names = ["background", "a"]
    task = Segmentation(OmegaConf.create({"data": {"ignore_index": 255}}), names)
    collected = Predictions(
        torch.nn.Identity(), names, task.label_text, task.pictures, (0.5,) * 3, (0.5,) * 3, 2, 0, 0
    )
    targets = torch.zeros(2, 8, 8, dtype=torch.long)
    targets[:, 2:5, 2:5], targets[0, 0, 0] = 1, 255
    probs = torch.nn.functional.one_hot(targets.clamp(max=1), 2).permute(0, 3, 1, 2).float()
    collected.update(torch.zeros(2, 3, 8, 8), targets, probs, task.decisions(probs))
    collected.close()
    run_dir = tmp_path / "run"
    loggers = build_loggers(compose_cfg(tmp_path), run_dir, is_main=True)
    loggers.log_predictions(collected, 1, 10)
    loggers.finish("completed")
    row = next(row for row in read_run(run_dir).history if row["_step"] == 10)
    assert row["val/masks/_type"] == "images/separated" and row["val/masks/count"] == 2
    layers = row["val/masks/all_masks"][0]
    assert set(layers) == {"predictions", "ground_truth"}
