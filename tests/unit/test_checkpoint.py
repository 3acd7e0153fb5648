"""Checkpoints: atomic writes, top-k bookkeeping, and files that open with weights_only=True."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from finetune.engine.checkpoint import (
    atomic_write,
    model_state,
    rng_state,
    save_safetensors,
    set_rng_state,
)
from finetune.engine.checkpointer import Checkpointer
from finetune.engine.ranking import TopK, metric_filename
from finetune.safety.errors import FinetuneError


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"old and whole")

    def half_then_crash(handle) -> None:
        handle.write(b"half of the new")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError, match="crash mid-write"):
        atomic_write(path, half_then_crash)
    assert path.read_bytes() == b"old and whole"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "temporary file left behind"


def test_atomic_write_disk_error_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_bytes(b"{}")

    def disk_full(handle) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(FinetuneError, match="No space left") as error:
        atomic_write(path, disk_full)
    assert str(path) in str(error.value) and path.read_bytes() == b"{}"


def test_atomic_write_replaces(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file.bin"
    atomic_write(path, lambda handle: handle.write(b"one"))
    atomic_write(path, lambda handle: handle.write(b"two"))
    assert path.read_bytes() == b"two"


def test_safetensors_are_written_by_name_whole_and_readable_by_colleagues(tmp_path) -> None:
    path = tmp_path / "model.safetensors"
    weights = {"w": torch.arange(6.0).view(2, 3), "b": torch.ones(3).half()}
    save_safetensors(weights, path, {"model": "m"})
    save_safetensors({k: v * 2 for k, v in weights.items()}, path, {"model": "m2"})
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"model": "m2"}
        assert torch.equal(handle.get_tensor("w"), weights["w"] * 2)
        assert handle.get_tensor("b").dtype == torch.float16
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


SAFETENSORS_ON_A_FULL_DISK = """
import resource, signal, sys, torch
from pathlib import Path
from finetune.engine.checkpoint import save_safetensors
from finetune.safety.errors import WriteFailed
path = Path(sys.argv[1])
save_safetensors({"w": torch.zeros(4)}, path, {})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2**16, 2**16))  # files stop at 64 KiB: EFBIG
try:
    save_safetensors({"w": torch.zeros(2**16)}, path, {})
except WriteFailed as error:
    print(error)
"""


def test_a_full_disk_under_safetensors_is_the_one_line_and_the_old_file_stays(tmp_path) -> None:
    """save_file words a failed write in its own error type; the run must still say which
    file could not be written, leave the previous weights whole and no temporary behind."""
    path = tmp_path / "model.safetensors"
    result = subprocess.run(
        [sys.executable, "-c", SAFETENSORS_ON_A_FULL_DISK, str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"could not write {path}: File too large"), result.stdout
    with safe_open(str(path), "pt") as handle:
        assert handle.get_tensor("w").shape == (4,)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_top_k_keeps_the_best_and_evicts_the_rest() -> None:
    top = TopK(k=2, mode="max")
    assert top.add(0.5, "a") == [] and top.add(0.7, "b") == []
    assert top.admits(0.6) and not top.admits(0.4)
    assert top.add(0.6, "c") == ["a"]
    assert top.entries == [(0.7, "b"), (0.6, "c")]

    low = TopK(k=1, mode="min")
    low.add(0.3, "x")
    assert low.admits(0.2) and not low.admits(0.4)
    assert low.add(0.2, "y") == ["x"]
    assert not TopK(k=0, mode="max").admits(1.0)


def test_metric_filename() -> None:
    name = metric_filename(7, {"val/loss": 0.12344, "val/acc": 0.98765}, "val/acc")
    assert name == "epoch=007-val_loss=0.1234-val_acc=0.9877.pt"


def fake_epoch(model: torch.nn.Module, epoch: int) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return {
        "epoch": epoch,
        "model_state_dict": model_state(model),
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": 1.0 / epoch,
        "rng": rng_state(),
        "config": {"model": {"name": "linear"}, "classes": [5, 6]},
    }


def test_checkpointer_files_load_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(tmp_path, "val/acc", "max", save_top_k=2, save_safetensors=True)
    for epoch, acc in enumerate([0.5, 0.8, 0.6, 0.7], start=1):
        metrics = {"val/loss": 1 - acc, "val/acc": acc}
        checkpointer.save(fake_epoch(model, epoch), model, metrics, {"model": "linear"})

    assert checkpointer.best["epoch"] == 2 and checkpointer.best["score"] == 0.8
    top_files = sorted(p.name for p in tmp_path.glob("epoch=*.pt"))
    assert top_files == [
        "epoch=002-val_loss=0.2000-val_acc=0.8000.pt",
        "epoch=004-val_loss=0.3000-val_acc=0.7000.pt",
    ]
    for path in tmp_path.glob("*.pt"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert {"epoch", "model_state_dict", "optimizer_state_dict", "loss"} <= set(state), path
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 4 and last["best"]["epoch"] == 2 and len(last["top_k"]) == 2
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        assert handle.metadata() == {"model": "linear"}


def test_checkpointer_rejects_an_unlogged_monitor(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(tmp_path, "val/auc", "max", save_top_k=1, save_safetensors=False)
    with pytest.raises(FinetuneError, match="monitor=val/auc"):
        checkpointer.save(fake_epoch(model, 1), model, {"val/acc": 0.5}, {})


def test_rng_state_round_trips_through_weights_only(tmp_path: Path) -> None:
    import random

    import numpy as np

    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_link_fallback_streams_a_copy_without_reading_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune.safety import atomic

    source = tmp_path / "last.pt"
    source.write_bytes(bytes(range(256)) * 4096)  # 1 MiB

    def no_links(*args: object) -> None:
        raise OSError("hard links not supported")

    def whole_file(*args: object) -> bytes:
        raise AssertionError("the copy read the whole checkpoint into memory")

    monkeypatch.setattr(atomic.os, "link", no_links)
    monkeypatch.setattr(Path, "read_bytes", whole_file)
    atomic.link_atomic(source, tmp_path / "best.pt")
    with source.open("rb") as a, (tmp_path / "best.pt").open("rb") as b:
        assert a.read() == b.read()


def test_a_tampered_top_k_path_never_deletes_outside_the_folder(tmp_path: Path) -> None:
    # A checkpoint names files outside its folder; eviction may only touch the folder's own.
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    victim = outside / "epoch=001-val_acc=0.1000.pt"
    victim.write_text("someone else's file")
    other = outside / "notes.txt"
    other.write_text("someone else's file")
    folder = tmp_path / "checkpoints"
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(folder, "val/acc", "max", save_top_k=2, save_safetensors=False)
    tampered = {
        "epoch": 1,
        "best": {"score": 0.1, "epoch": 1, "path": str(other)},
        "top_k": [[0.1, str(victim)], [0.05, "../../elsewhere/notes.txt"]],
    }
    checkpointer.restore(tampered)
    assert checkpointer.best_file() == folder / "best.pt"
    for epoch, acc in ((2, 0.5), (3, 0.6)):  # both better: the tampered entries are evicted
        checkpointer.save(fake_epoch(model, epoch), model, {"val/acc": acc}, {})
    assert victim.read_text() == other.read_text() == "someone else's file"
    last = torch.load(folder / "last.pt", weights_only=True)
    assert [name for _, name in last["top_k"]] == [
        "epoch=003-val_acc=0.6000.pt",
        "epoch=002-val_acc=0.5000.pt",
    ]
    assert last["best"]["path"] == "best.pt"


@pytest.mark.parametrize("mode", ["max", "min"])
def test_a_nan_monitor_is_never_best_and_a_later_number_wins(tmp_path: Path, mode: str) -> None:
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(tmp_path, "val/loss", mode, save_top_k=2, save_safetensors=False)
    for epoch, loss in enumerate([float("nan"), 0.7, float("nan")], start=1):
        checkpointer.save(fake_epoch(model, epoch), model, {"val/loss": loss}, {})
    assert (checkpointer.best["epoch"], checkpointer.best["score"]) == (2, 0.7)
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2
    assert [score for score, _ in checkpointer.top_k.entries] == [0.7]
    # A NaN best recorded by an older checkpoint gives way to the next number too.
    checkpointer.best = {"score": float("nan"), "epoch": 1, "path": "best.pt"}
    checkpointer.save(fake_epoch(model, 4), model, {"val/loss": 0.9}, {})
    assert checkpointer.best["epoch"] == 4


def test_a_run_whose_monitor_was_always_nan_tests_last_pt(tmp_path: Path) -> None:
    from finetune.engine.final_test import tested_checkpoint

    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(tmp_path, "val/loss", "min", save_top_k=1, save_safetensors=False)
    for epoch in (1, 2):
        checkpointer.save(fake_epoch(model, epoch), model, {"val/loss": float("nan")}, {})
    assert checkpointer.best["path"] is None  # not "no checkpoint could be saved"
    assert tested_checkpoint(checkpointer, "val/loss") == str(tmp_path / "last.pt")


def test_an_equal_score_with_a_lower_loss_is_the_better_epoch(tmp_path: Path) -> None:
    """Accuracy on a small validation split ties often: the tie goes to the lower loss (of the
    same weights: val_ema/loss for val_ema/acc), and the best's loss travels in last.pt."""
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(
        tmp_path, "val_ema/acc", "max", save_top_k=0, save_safetensors=False
    )
    epochs = [
        {"val_ema/acc": 0.9, "val_ema/loss": 0.30, "val/loss": 0.1},
        {"val_ema/acc": 0.9, "val_ema/loss": 0.20, "val/loss": 0.9},  # a tie, a lower loss
        {"val_ema/acc": 0.9, "val_ema/loss": 0.25, "val/loss": 0.0},  # a tie, a higher loss
        {"val_ema/acc": 0.8, "val_ema/loss": 0.01, "val/loss": 0.0},  # a lower score
    ]
    chosen = [
        checkpointer.save(fake_epoch(model, n), model, m, {}) for n, m in enumerate(epochs, 1)
    ]
    assert chosen == [True, True, False, False]
    assert checkpointer.best == {"score": 0.9, "epoch": 2, "path": "best.pt", "loss": 0.20}
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 2
    assert torch.load(tmp_path / "last.pt", weights_only=True)["best"]["loss"] == 0.20
    # A best recorded before ties were broken (no loss) stays best on a tie.
    checkpointer.best = {"score": 0.9, "epoch": 2, "path": "best.pt"}
    assert not checkpointer.improved({"val_ema/acc": 0.9, "val_ema/loss": 0.0})
