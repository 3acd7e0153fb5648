"""Issue 17 end to end: strong augmentation resumes bitwise, early stopping and k-fold in a
sweep summary, optimizer.lr=find, and augmented images in TensorBoard.

Runs are tiny (test_resnet at 16x16, a few batches an epoch), as in test_resume.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
import yaml

TINY = (
    "model=test_resnet",
    "data.image_size=16",
    "data.batch_size=32",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.progress_bar=false",
    "logger=csv",
)
STRONG = ("augment=strong", "data.sampler=weighted", "scheduler=none")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    path = run_dir / "checkpoints" / "last.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["model_state_dict"]


def test_strong_augmentation_and_weighted_sampler_resume_bitwise(run_train, tmp_path: Path):
    first = run_train(*TINY, *STRONG, "trainer.epochs=1")
    assert first.returncode == 0, first.output[-2000:]
    resumed = run_train(f"resume={first.run_dir}", "trainer.epochs=2", run_dir=first.run_dir)
    assert resumed.returncode == 0, resumed.output[-2000:]
    straight = run_train(*TINY, *STRONG, "trainer.epochs=2", run_dir=tmp_path / "straight")
    assert straight.returncode == 0, straight.output[-2000:]
    a, b = weights(first.run_dir), weights(straight.run_dir)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    hparams = yaml.safe_load((straight.run_dir / "hparams.yaml").read_text())
    assert hparams["config"]["augment"]["name"] == "strong"
    assert hparams["config"]["augment"]["mixup_alpha"] == 0.8
    assert set(hparams["run"]["class_counts"]) == {"train", "val", "test"}


def test_early_stopping_and_folds_show_in_the_sweep_summary(run_train, tmp_path: Path):
    # min_delta=10: no epoch ever improves enough, so each job stops after patience=1 epochs.
    result = run_train(
        "-m",
        *TINY,
        "trainer.epochs=4",
        "trainer.patience=1",
        "trainer.min_delta=10",
        "data.folds=2",
        "data.fold=0,1",
        f"paths.log_dir={tmp_path}",
        own_dir=True,
    )
    assert result.returncode == 0, result.output[-3000:]
    sweep_dir = next(p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir())
    with open(sweep_dir / "summary.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["status"] for row in rows] == ["early_stopped", "early_stopped"]
    assert all(row["test"] for row in rows)  # tested on the best checkpoint as usual
    with open(sweep_dir / "folds.csv") as file:
        (folds,) = list(csv.DictReader(file))
    assert (folds["folds"], folds["finished"]) == ("2", "2")
    assert folds["best_mean"] and folds["best_std"] and folds["test_mean"]
    assert "Cross-validation (mean ± std over folds)" in result.output
    assert "2 jobs, 0 not completed, 2 stopped early" in result.output
    for row in rows:
        summary = yaml.safe_load((Path(row["run_dir"]) / "summary.json").read_text())
        assert summary["epochs_done"] == 2


def test_lr_find_in_a_run_trains_with_its_suggestion(run_train):
    result = run_train(
        *TINY,
        "trainer.epochs=1",
        "optimizer.lr=find",
        "lr_find.num_steps=20",
        "logger=tensorboard",
    )
    assert result.returncode == 0, result.output[-2000:]
    hparams = yaml.safe_load((result.run_dir / "hparams.yaml").read_text())
    suggestion = hparams["run"]["lr_find"]["suggestion"]
    assert hparams["config"]["optimizer"]["lr"] == suggestion > 0
    assert (result.run_dir / "lr_find.png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(result.run_dir / "tensorboard")).Reload()
    assert "train/augmented" in events.Tags()["images"]
    assert "lr_find/plot" in events.Tags()["images"]
    # No scalars at steps 0..N: W&B would then drop the run's own first N steps.
    assert not [tag for tag in events.Tags()["scalars"] if tag.startswith("lr_find/")]
    curve = json.loads((result.run_dir / "lr_find.json").read_text())
    assert curve["suggestion"] == suggestion and len(curve["lrs"]) == len(curve["losses"])
