"""Transfer learning through the real entrypoint: the guard, gradual resume, the demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, train_env

TINY = (
    "model=test_resnet",
    "data.image_size=16",
    "trainer.limit_train_batches=4",
    "trainer.progress_bar=false",
    "logger=csv",
)


def test_freezing_a_random_backbone_is_refused(run_train):
    result = run_train(*TINY, "freeze=backbone", "model.pretrained=false")
    assert result.returncode == 2
    assert "freeze.allow_random_backbone=true" in result.output
    assert "Traceback" not in result.output


def test_resume_after_the_unfreeze_stays_unfrozen_and_matches(run_train, tmp_path):
    pretrained = run_train(*TINY, "trainer.epochs=1", run_dir=tmp_path / "pre")
    assert pretrained.returncode == 0, pretrained.output[-2000:]
    gradual = (
        *TINY,
        "freeze=gradual",
        "freeze.unfreeze_at_epoch=2",
        "scheduler=none",
        f"model.pretrained={tmp_path / 'pre'}",
    )
    first = run_train(*gradual, "trainer.epochs=2", run_dir=tmp_path / "a")
    assert first.returncode == 0, first.output[-2000:]
    assert "thaws" in (tmp_path / "a/train.log").read_text()
    state = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)
    assert state["freeze"] == {"policy": "gradual", "frozen_stages": 0}
    resumed = run_train(f"resume={tmp_path / 'a'}", "trainer.epochs=3", run_dir=tmp_path / "a")
    assert resumed.returncode == 0, resumed.output[-2000:]
    straight = run_train(*gradual, "trainer.epochs=3", run_dir=tmp_path / "b")
    assert straight.returncode == 0
    a = torch.load(tmp_path / "a/checkpoints/last.pt", weights_only=True)["model_state_dict"]
    b = torch.load(tmp_path / "b/checkpoints/last.pt", weights_only=True)["model_state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.slow
def test_transfer_demo_beats_a_random_frozen_backbone(tmp_path):
    command = [
        sys.executable,
        "scripts/transfer_demo.py",
        "--model",
        "test_resnet",
        "--epochs",
        "4",
        "--probe-epochs",
        "5",
        "--out",
        str(tmp_path),
    ]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=train_env(tmp_path), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    accuracies = json.loads((tmp_path / "results.json").read_text())
    assert accuracies["transfer"] > accuracies["random"] + 0.1, result.stdout
