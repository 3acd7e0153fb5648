"""Checkpoints written in the background: the state as it was at save time, errors surfaced."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from conftest import compose_train
from omegaconf import OmegaConf
from torch import nn

from finetune.engine.checkpoint import model_state
from finetune.engine.checkpointer import Checkpointer
from finetune.engine.distributed import DistInfo
from finetune.engine.rundir import RunPaths
from finetune.engine.writer import BackgroundCheckpointer, build_checkpointer, writes_in_background
from finetune.safety.errors import FinetuneError, WriteFailed


def state_of(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> dict:
    return {
        "epoch": epoch,
        "global_step": epoch,
        "model_state_dict": model_state(model),
        "optimizer_state_dict": optimizer.state_dict(),
    }


def trained_pair() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()  # momentum buffers exist: optimizer state tensors too
    return model, optimizer


def held_back(checkpointer: Checkpointer) -> threading.Event:
    """Make the writer thread wait until the returned event is set."""
    release, save = threading.Event(), checkpointer.save

    def delayed_save(*args):  # noqa: ANN002, ANN202
        assert release.wait(timeout=60)
        return save(*args)

    checkpointer.save = delayed_save
    return release


def test_the_file_holds_the_state_at_save_time_not_later_steps(tmp_path: Path) -> None:
    model, optimizer = trained_pair()
    checkpointer = Checkpointer(tmp_path, "val/acc", "max", 1, save_safetensors=True)
    writer = BackgroundCheckpointer(checkpointer, background=True)
    release = held_back(checkpointer)
    expected = {k: v.clone() for k, v in model_state(model).items()}
    momentum = optimizer.state_dict()["state"][0]["momentum_buffer"].clone()
    assert writer.save(state_of(model, optimizer, 1), model, {"val/acc": 0.5}, {}) is True
    assert checkpointer.best["epoch"] is None  # bookkeeping follows the files, not yet written
    with torch.no_grad():  # training goes on while the write waits
        for parameter in model.parameters():
            parameter.add_(1.0)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    release.set()
    writer.wait()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    for key, value in expected.items():
        assert torch.equal(saved["model_state_dict"][key], value)
    assert torch.equal(saved["optimizer_state_dict"]["state"][0]["momentum_buffer"], momentum)
    from safetensors.torch import load_file

    shared = load_file(tmp_path / "model.safetensors")
    assert all(torch.equal(shared[k], v) for k, v in expected.items())
    assert checkpointer.best["epoch"] == 1 and writer.best["epoch"] == 1


def test_a_failed_background_write_raises_write_failed_on_the_main_thread(tmp_path: Path) -> None:
    model, optimizer = trained_pair()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    writer = BackgroundCheckpointer(
        Checkpointer(blocker / "checkpoints", "val/acc", "max", 1, False), background=True
    )
    writer.save(state_of(model, optimizer, 1), model, {"val/acc": 0.5}, {})
    with pytest.raises(WriteFailed, match="could not write"):
        writer.wait()


def test_saves_are_one_at_a_time_and_in_order(tmp_path: Path) -> None:
    model, optimizer = trained_pair()
    checkpointer = Checkpointer(tmp_path, "val/acc", "max", 2, save_safetensors=False)
    writer = BackgroundCheckpointer(checkpointer, background=True)
    for epoch, acc in enumerate([0.3, 0.6, 0.4], start=1):
        writer.save(state_of(model, optimizer, epoch), model, {"val/acc": acc}, {})
    writer.save_last({**state_of(model, optimizer, 4), "global_step": 40})
    assert torch.load(tmp_path / "last.pt", weights_only=True)["global_step"] == 40
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2
    assert [round(score, 1) for score, _ in writer.top_k.entries] == [0.6, 0.4]


@pytest.mark.parametrize(
    ("setting", "device", "threaded"),
    [("auto", "cpu", False), ("auto", "cuda", True), ("auto", "mps", True), (True, "cpu", True)],
)
def test_the_default_writes_from_a_thread_on_an_accelerator_only(
    tmp_path: Path, setting: bool | str, device: str, threaded: bool
) -> None:
    """checkpoint.background=auto (the default): a GPU's epoch leaves the CPU free for the
    write; on the CPU the thread would take training's cores."""
    cfg = compose_train(tmp_path, f"checkpoint.background={str(setting).lower()}")
    assert setting != "auto" or OmegaConf.select(cfg, "checkpoint.background") == "auto"
    writer = build_checkpointer(cfg, RunPaths(tmp_path / "run"), DistInfo(), torch.device(device))
    assert (writer.pool is not None) is threaded


def test_a_background_setting_that_is_none_of_the_three_is_named() -> None:
    with pytest.raises(FinetuneError, match=r"checkpoint.background=often must be auto, true or f"):
        writes_in_background("often", torch.device("cpu"))
