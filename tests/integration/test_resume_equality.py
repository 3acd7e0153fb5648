"""A resumed run is the run you asked for: after Ctrl-C mid-epoch, with data loader workers,
augmentation, EMA and a thawing backbone, the resumed run ends with the uninterrupted run's
model, optimizer, schedule and EMA state, bit for bit.

The interruption is not timed: FINETUNE_SIGNAL_AT_STEP makes the run send itself SIGINT right
after a chosen step (safety/injection.py), so the test stops it at a known state.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import run_train_in
from resume_checks import RESUME_STATE_KEYS, state_differences

# 4 steps an epoch; workers and augmentation (digits' default) on; the backbone thaws at
# epoch 2, so the interrupted step lies after the thaw; the cosine schedule is mid-way.
RUN = (
    "model=test_resnet",
    "data.image_size=16",
    "data.batch_size=32",
    "data.num_workers=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.progress_bar=false",
    "trainer.epochs=3",
    "trainer.ema_decay=0.9",
    "freeze=gradual",
    "freeze.unfreeze_at_epoch=2",
    "freeze.allow_random_backbone=true",
    "logger=csv",
)
INTERRUPT_AT_STEP = 6  # mid-way through epoch 2


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("straight")
    result = run_train_in(base, *RUN)
    assert result.returncode == 0, result.output[-3000:]
    return result.run_dir


def test_ctrl_c_mid_epoch_then_resume_ends_bitwise_as_the_straight_run(
    straight_run, tmp_path, monkeypatch
):
    monkeypatch.setenv("FINETUNE_SIGNAL_AT_STEP", f"SIGINT:{INTERRUPT_AT_STEP}")
    interrupted = run_train_in(tmp_path, *RUN)
    assert interrupted.returncode == 128 + signal.SIGINT, interrupted.output[-3000:]
    stopped = load(interrupted.run_dir / "checkpoints/last.pt")
    assert (stopped["global_step"], stopped["loop"]["step_in_epoch"]) == (INTERRUPT_AT_STEP, 2)

    monkeypatch.delenv("FINETUNE_SIGNAL_AT_STEP")
    resumed = run_train_in(tmp_path, f"resume={interrupted.run_dir}", run_dir=interrupted.run_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert f"step {INTERRUPT_AT_STEP}" in resumed.output

    ours = load(interrupted.run_dir / "checkpoints/last.pt")
    reference = load(straight_run / "checkpoints/last.pt")
    assert ours["ema_state_dict"].keys() == ours["model_state_dict"].keys()
    found = [
        d for key in RESUME_STATE_KEYS for d in state_differences(ours[key], reference[key], key)
    ]
    assert not found, f"the resumed run differs from the straight one in {found[:8]}"
    assert "SIGNAL_AT_STEP" not in "".join(os.environ)
