"""A save killed at each point between its writes leaves a run whose resume is consistent.

A child process saves epoch 1 and epoch 2 (better, so best.pt and the top-k file move on and
epoch 1's top-k file is evicted) and SIGKILLs itself at a chosen point of epoch 2's save
(checkpoint.py's FINETUNE_TEST_KILL_AT test hook). A resume's restore must then leave best.pt
holding the epoch last.pt names as best, the top-k files exactly those last.pt lists, and
model.safetensors the best weights.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.engine.checkpoint import KILL_AT_ENV, KILL_POINTS
from finetune.engine.checkpointer import Checkpointer

SAVE_TWO_EPOCHS = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import torch

    from finetune.engine.checkpointer import Checkpointer

    directory = Path(sys.argv[1])
    checkpointer = Checkpointer(directory, "val/acc", "max", 1, True, "error", {"model": "m"})
    for epoch, acc in ((1, 0.5), (2, 0.8)):
        weights = {"weight": torch.full((2, 2), float(epoch))}
        state = {"epoch": epoch, "global_step": epoch, "model_state_dict": weights}
        checkpointer.save(state, None, {"val/acc": acc}, {"model": "m"})
    """
)


def save_and_kill(directory: Path, point: str | None) -> int:
    env = {KILL_AT_ENV: f"{point}:2"} if point else {}
    process = subprocess.run(
        [sys.executable, "-c", SAVE_TWO_EPOCHS, str(directory)],
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return process.returncode


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != KILL_AT_ENV}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_save_killed_at_any_point_resumes_consistent(tmp_path: Path, point: str) -> None:
    directory = tmp_path / "checkpoints"
    assert save_and_kill(directory, point) == -signal.SIGKILL
    last = load(directory / "last.pt")

    resumed = Checkpointer(directory, "val/acc", "max", 1, True, "error", {"model": "m"})
    resumed.restore(last)

    best_epoch = last["best"]["epoch"]
    assert load(directory / "best.pt")["epoch"] == best_epoch
    assert load(directory / "best.pt")["model_state_dict"]["weight"][0, 0] == best_epoch
    assert load_file(directory / "model.safetensors")["weight"][0, 0] == best_epoch
    listed = sorted(name for _, name in last["top_k"])
    assert sorted(p.name for p in directory.glob("epoch=*.pt")) == listed
    for name in listed:
        assert load(directory / name)["epoch"] == int(name[6:9])


def test_the_hook_kills_nothing_when_unset(tmp_path: Path) -> None:
    assert save_and_kill(tmp_path / "checkpoints", None) == 0
    last = load(tmp_path / "checkpoints/last.pt")
    assert last["best"] == {"score": 0.8, "epoch": 2, "path": "best.pt", "loss": None}
    assert [name for _, name in last["top_k"]] == ["epoch=002-val_acc=0.8000.pt"]
