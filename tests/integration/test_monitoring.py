"""Monitoring end to end: a real run's TensorBoard, W&B and CSV records read back, a real
TensorBoard server, a multirun's W&B group, and inputs that must fail (or must not)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import error_lines
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb_records import read_run

pytestmark = pytest.mark.slow

TINY = (
    "model=test_resnet",
    "trainer.epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=2",
    "logger=default",
    "logger.tensorboard.histogram_every_n_epochs=1",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_in):
    """One small real run with every backend (W&B offline), shared by the record tests."""
    result = train_in(tmp_path_factory.mktemp("monitoring"), *TINY)
    assert result.returncode == 0, result.output[-3000:]
    return result


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_tensorboard_records(run) -> None:
    events = EventAccumulator(
        str(run.run_dir / "tensorboard"), size_guidance={"histograms": 0, "images": 0}
    )
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]
    assert [e.step for e in events.Scalars("val/acc")] == [4, 8]
    assert {"lr", "train/images_per_s", "train/loss_epoch", "val/loss"} <= set(tags["scalars"])
    assert [e.step for e in events.Histograms("gradients/fc.weight")] == [4, 8]
    assert [e.step for e in events.Images("val/images")] == [4, 8]
    assert [e.step for e in events.Images("val/confusion_matrix")] == [4, 8]
    assert any(tag.startswith("pr_curve/") for tag in tags["tensors"])
    best = summary(run.run_dir)["best"]["score"]
    assert events.Scalars("hparam/best/val/acc")[0].value == pytest.approx(best)
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def test_wandb_offline_run(run) -> None:
    record = read_run(run.run_dir)
    assert record.config["model"]["name"] == "test_resnet"
    history = [row for row in record.history if "train/loss" in row]
    assert [row["_step"] for row in history][:2] == [2, 4]
    assert any("val/acc" in row for row in record.history)
    assert record.summary["best/val/acc"] == pytest.approx(summary(run.run_dir)["best"]["score"])
    assert "test/acc" in record.summary
    assert record.name == ",".join(TINY)[:128] and set(TINY) <= set(record.tags)
    assert record.group == ""  # a single run: no sweep
    last = torch.load(run.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["wandb_run_id"] == record.run_id  # what resume= continues
    assert f"wandb sync {record.path.parent}" in run.output


def test_train_log_has_one_line_per_epoch(run) -> None:
    lines = (run.run_dir / "train.log").read_text().splitlines()
    epochs = [line for line in lines if re.search(r"\] epoch \d/2 \|", line)]
    assert len(epochs) == 2
    assert all(re.search(r"train/loss .* val/acc .* lr .* img/s \| [\d.]+s", e) for e in epochs)


def test_the_run_draws_its_curves(run) -> None:
    image = Image.open(run.run_dir / "curves.png")
    assert image.format == "PNG" and image.size == (1200, 480)
    assert len(image.convert("RGB").getcolors(maxcolors=100_000)) > 50  # a plot, not a blank


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_tensorboard_server_lists_the_scalar_tags(run) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(run.run_dir),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        tags, deadline = None, time.monotonic() + 180
        while tags is None and time.monotonic() < deadline and server.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
                with urllib.request.urlopen(url, timeout=10) as response:
                    tags = json.load(response) or None  # empty until the first load
            except OSError:
                time.sleep(1)
        assert tags, "TensorBoard did not answer"
        assert {"train/loss", "val/acc", "lr"} <= set(tags["tensorboard"])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_multirun_gives_one_wandb_run_per_job_in_one_group(tmp_path: Path, run_train) -> None:
    log_dir = tmp_path / "outputs"
    result = run_train(
        "-m", "model=test_resnet", "debug=fast", "logger=[csv,wandb]",
        "optimizer.lr=1e-3,1e-2", f"paths.log_dir={log_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.output[-3000:]
    jobs = sorted(p.parent for p in log_dir.glob("multirun/*/*/*/metrics.csv"))
    assert [job.name for job in jobs] == ["0", "1"]
    records = [read_run(job) for job in jobs]
    sweep = jobs[0].parent
    assert {r.group for r in records} == {str(sweep.relative_to(log_dir))}
    assert len({r.run_id for r in records}) == 2
    assert ["optimizer.lr=0.001" in r.tags for r in records] == [True, False]


def test_an_invalid_wandb_key_online_does_not_stop_training(
    run_train, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "invalid")
    result = run_train("model=test_resnet", "debug=fast", "logger.wandb.mode=online")
    assert result.returncode == 0, result.output[-3000:]
    assert "logging offline instead" in result.output or "W&B init failed" in result.output
    assert read_run(result.run_dir).config["model"]["name"] == "test_resnet"
    assert summary(result.run_dir)["status"] == "completed"


def test_negative_histogram_interval_stops_before_training(run_train) -> None:
    result = run_train(
        "model=test_resnet", "debug=fast", "logger.tensorboard.histogram_every_n_epochs=-1"
    )
    assert result.returncode == 2
    assert "logger.tensorboard.histogram_every_n_epochs=-1" in result.output
    assert "Traceback" not in result.output and "epoch 1/" not in result.output


def test_an_unknown_logger_is_hydras_error(run_train) -> None:
    result = run_train("model=test_resnet", "logger=nope")
    assert result.returncode == 2, result.output[-3000:]
    [line] = error_lines(result.output)
    assert "logger/nope" in line and "Available options" in line and "csv" in line, line


def test_an_unwritable_output_directory_is_named_before_training(tmp_path: Path, run_train) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = run_train("model=test_resnet", "debug=fast", run_dir=blocker / "run")
    assert result.returncode != 0
    assert str(blocker / "run") in result.output and "epoch 1/" not in result.output


def test_resume_continues_the_same_wandb_run_and_tensorboard_curve(run_train) -> None:
    first = run_train(*TINY, "trainer.epochs=1")
    assert first.returncode == 0, first.output[-3000:]
    resumed = run_train(f"resume={first.run_dir}", "trainer.epochs=2", run_dir=first.run_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]
    logs = sorted((first.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 2 and len({log.stem for log in logs}) == 1  # one id, two sessions
    events = EventAccumulator(str(first.run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]
    assert [e.step for e in events.Scalars("val/acc")] == [4, 8]
