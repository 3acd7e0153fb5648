"""Faults recognised and worded (faults.py), bad images skipped across worker processes,
failed checkpoint saves under checkpoint.on_error, and the NaN watch of the loop."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from finetune.data.folders import ImageFiles, collate_readable, skipped_images
from finetune.data.splits import Splits
from finetune.data.tracking import TrackedDataset, last_sample_of, worker_deaths
from finetune.engine.checkpointer import Checkpointer
from finetune.safety.errors import (
    DataFault,
    Diverged,
    FinetuneError,
    OutOfMemory,
    WriteFailed,
    exit_on_user_error,
)
from finetune.safety.faults import NonFiniteWatch, explain, silence_dead_workers, status_of

CFG = OmegaConf.create({"data": {"batch_size": 48, "image_size": 224, "num_workers": 3}})


def test_other_errors_are_recognised_or_left_alone() -> None:
    anomaly = RuntimeError("Function 'AddmmBackward0' returned nan values in its 0th output.")
    assert isinstance(explain(anomaly, CFG), Diverged)
    full = OSError(errno.ENOSPC, "No space left on device", "/run/metrics.csv")
    assert "could not write /run/metrics.csv" in str(explain(full, CFG))
    assert isinstance(explain(full, CFG), WriteFailed)
    bug = ValueError("a bug")
    assert explain(bug, CFG) is bug and status_of(bug) == "failed"
    interrupt = KeyboardInterrupt()
    assert explain(interrupt, CFG) is interrupt and status_of(interrupt) == "interrupted"


@pytest.mark.parametrize("kind", [FinetuneError, Diverged, OutOfMemory, WriteFailed, DataFault])
def test_each_fault_exits_with_its_own_code(kind) -> None:
    with pytest.raises(SystemExit) as exited, exit_on_user_error():
        raise kind("what happened; the fix")
    assert exited.value.code == kind.exit_code
    assert len({FinetuneError.exit_code, Diverged.exit_code, OutOfMemory.exit_code}) == 3


def tree_dataset(root: Path, make_image_tree, on_bad_image: str) -> tuple[ImageFiles, Path]:
    """ImageFiles over a tiny tree with one truncated PNG; (dataset, broken file)."""
    make_image_tree(root, {"": 4}, ("a", "b"))
    files = sorted(root.rglob("*.png"))
    broken = files[2]
    broken.write_bytes(broken.read_bytes()[:60])
    labelled = [(str(f), int(f.parent.name == "b")) for f in files]
    dataset = ImageFiles(labelled, on_bad_image, "white", root)
    dataset.transform = lambda image: torch.zeros(3, 4, 4)
    return dataset, broken


def test_skipped_images_are_counted_across_worker_processes(tmp_path, make_image_tree) -> None:
    dataset, broken = tree_dataset(tmp_path / "tree", make_image_tree, "skip")
    loader = DataLoader(
        TrackedDataset(dataset, "train", 2),
        batch_size=3,
        num_workers=2,
        collate_fn=collate_readable,
    )
    for _ in range(2):  # twice: a file is counted once
        sizes = [len(targets) for _, targets in loader]
        assert sum(sizes) == len(dataset) - 1
    splits = Splits(dataset, dataset, dataset, ["a", "b"], "pil")
    assert skipped_images(splits) == {"skipped_images": {"count": 1, "files": [str(broken)]}}


def test_an_unreadable_image_in_a_worker_names_the_worker_and_file(
    tmp_path, make_image_tree
) -> None:
    dataset, broken = tree_dataset(tmp_path / "tree", make_image_tree, "error")
    loader = DataLoader(TrackedDataset(dataset, "train", 1), batch_size=8, num_workers=1)
    with pytest.raises(DataFault) as raised:
        next(iter(loader))
    fault = explain(raised.value, CFG)
    assert isinstance(fault, DataFault)
    assert str(fault).startswith(f"data loader worker 0: unreadable image {broken} (sample 2)")
    assert "\n" not in str(fault)


def test_a_worker_killed_while_handing_over_a_batch_is_named_not_the_reset_connection(
    tmp_path, make_image_tree
) -> None:
    """PyTorch raises the reset connection when its worker dies mid-transfer (before the worker
    is a zombie); the fault still names the worker, its signal and its sample."""
    dataset, _ = tree_dataset(tmp_path / "tree", make_image_tree, "error")
    tracked = TrackedDataset(dataset, "train", 1)
    worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    worker.start()
    tracked.table[0] = torch.tensor([worker.pid, 4, 1])  # as the worker notes it (tracking.py)
    os.kill(worker.pid, signal.SIGKILL)
    try:
        lost = ConnectionResetError(104, "Connection reset by peer")
        fault = explain(lost, CFG, last_sample_of, worker_deaths)
        assert isinstance(fault, DataFault), fault
        assert f"train data loader worker 0 (pid {worker.pid}), loading train sample 4" in str(
            fault
        )
        assert "was killed by SIGKILL" in str(fault) and "data.num_workers" in str(fault)
        assert explain(lost, CFG) is lost  # no worker died: the error is left as it is
    finally:
        worker.join()


# A process with a batch to hand over, and a client that leaves half-way through the handshake
# (as the main process does when PyTorch's dead-worker error interrupts its fetch).
DROPPED_HANDOFF = """
import os, socket, sys, tempfile, time
from multiprocessing import resource_sharer
from finetune.data.loaders import quiet_dead_worker_handoffs
if sys.argv[1] == "quiet":
    quiet_dead_worker_handoffs()
read_end, _ = os.pipe()
resource_sharer.DupFd(read_end)  # starts the thread that hands the descriptor over
client = socket.socket(socket.AF_UNIX)
client.connect(resource_sharer._resource_sharer._address)
client.close()
time.sleep(1)
# Other errors still print, those that passed through the sharer outside its thread included.
sys.excepthook(ValueError, ValueError("not a handover"), None)
with tempfile.TemporaryDirectory() as folder:
    deaf = os.path.join(folder, "deaf")
    socket.socket(socket.AF_UNIX).bind(deaf)  # bound, never listening: connecting is refused
    try:
        resource_sharer._resource_sharer.get_connection((deaf, 0))
    except ConnectionError:
        sys.excepthook(*sys.exc_info())
"""


@pytest.mark.parametrize("hook", ["quiet", "default"])
def test_a_handover_left_half_way_prints_no_traceback(hook) -> None:
    """A dead worker is reported by the loader's one error line (quiet_dead_worker_handoffs);
    without the hook, the same handshake prints multiprocessing's traceback. A connection error
    that passed through the sharer in the main thread prints either way."""
    done = subprocess.run(
        [sys.executable, "-c", DROPPED_HANDOFF, hook], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "ValueError: not a handover" in done.stderr
    assert "ConnectionRefusedError" in done.stderr
    assert ("in _serve" in done.stderr) == (hook == "default"), done.stderr


def pending_sigchld_at_the_swap(monkeypatch, told: str) -> list:
    """signal.signal as it behaves when a SIGCHLD is pending: torch's handler runs inside the
    first call, before the swap, and raises `told`; a later call swaps. Returns the calls."""
    calls: list = []

    def swap(signum: int, handler: object) -> None:
        calls.append((signum, handler))
        if len(calls) == 1:
            raise RuntimeError(told)

    monkeypatch.setattr(signal, "signal", swap)
    return calls


def test_a_sigchld_pending_when_the_handler_is_swapped_is_not_a_second_failure(
    monkeypatch,
) -> None:
    """CI once saw torch's handler raise inside record_failure's swap: a traceback, exit 1,
    instead of the dead worker's one line and exit 6."""
    calls = pending_sigchld_at_the_swap(
        monkeypatch, "DataLoader worker (pid 17336) is killed by signal: Killed. "
    )
    silence_dead_workers()
    assert calls == [(signal.SIGCHLD, signal.SIG_DFL)] * 2  # the second one swapped


def test_another_error_at_the_swap_is_not_swallowed(monkeypatch) -> None:
    pending_sigchld_at_the_swap(monkeypatch, "something else went wrong")
    with pytest.raises(RuntimeError, match="something else"):
        silence_dead_workers()


def test_a_failing_transform_names_the_sample_and_its_file(tmp_path, make_image_tree) -> None:
    dataset, _ = tree_dataset(tmp_path / "tree", make_image_tree, "error")

    def broken_transform(image: object) -> torch.Tensor:
        raise ValueError("crop larger than the image")

    dataset.transform = broken_transform
    with pytest.raises(DataFault, match=r"loading val sample 0 \(.*a/0.png\) failed: ValueError"):
        TrackedDataset(dataset, "val", 0)[0]


def test_the_watch_names_the_first_non_finite_step() -> None:
    watch = NonFiniteWatch(torch.device("cpu"))
    for step, loss in enumerate([1.0, 2.0, float("inf"), float("nan")], start=1):
        watch.see(torch.tensor(loss), step)
    with pytest.raises(Diverged, match="loss is inf at step 3"):
        watch.check()


def test_the_watch_refuses_nan_weights_behind_a_finite_loss() -> None:
    watch = NonFiniteWatch(torch.device("cpu"))
    watch.see(torch.tensor(0.5), 1)
    model = torch.nn.Linear(2, 2)
    watch.check(model)  # all finite: no error
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(Diverged, match="weights hold NaN"):
        watch.check(model)


def save_epoch(checkpointer: Checkpointer, epoch: int, acc: float) -> bool:
    model = torch.nn.Linear(2, 2)
    state = {"epoch": epoch, "global_step": epoch, "model_state_dict": model.state_dict()}
    return checkpointer.save(state, model, {"val/acc": acc}, {})


def test_a_failed_save_stops_or_warns_and_best_stays_a_file_that_exists(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    strict = Checkpointer(blocker / "ckpt", "val/acc", "max", 2, False, "error")
    with pytest.raises(WriteFailed, match=f"could not write {blocker}/ckpt/last.pt"):
        save_epoch(strict, 1, 0.5)

    good = tmp_path / "checkpoints"
    lenient = Checkpointer(good, "val/acc", "max", 2, False, "warn")
    assert save_epoch(lenient, 1, 0.5)
    lenient.directory = blocker / "ckpt"  # the disk "fills"
    caplog.set_level(logging.WARNING)
    assert not save_epoch(lenient, 2, 0.9)  # better, but not saved: not best
    assert lenient.failed_saves == 1
    assert "checkpoint of epoch 2 not saved" in caplog.text
    assert lenient.best == {"score": 0.5, "epoch": 1, "path": "best.pt", "loss": None}
    assert [name for _, name in lenient.top_k.entries] == ["epoch=001-val_acc=0.5000.pt"]
    assert torch.load(good / "best.pt", weights_only=True)["epoch"] == 1


def test_on_error_must_be_error_or_warn(tmp_path) -> None:
    with pytest.raises(FinetuneError, match="checkpoint.on_error=ignore"):
        Checkpointer(tmp_path, "val/acc", "max", 1, False, "ignore")
