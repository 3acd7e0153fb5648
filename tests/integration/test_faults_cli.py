"""Faults during a run, each caused for real in a `python train.py` subprocess.

The training step's own faults: a loss that diverges, running out of memory, Ctrl-C, a full disk.
Faults from the data and the services are in test_faults_data_and_services.py; what both check of
a run directory and its output is in fault_checks.py.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO_ROOT, train_env
from fault_checks import (
    TINY,
    assert_fault,
    assert_finite,
    assert_whole_metrics,
    file_hash,
    load,
    summary,
    wait_for_line,
)
from processes import children, wait_for

from finetune.safety import errors

pytestmark = pytest.mark.slow

# A learning rate that multiplies by 1e10 after epoch 1: epoch 2 diverges to NaN.
DIVERGING = ("optimizer=sgd", "optimizer.lr=0.01", "scheduler=step")
DIVERGING += ("scheduler.step_epochs=1", "scheduler.gamma=1e10")


# 1. NaN or inf loss --------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [(), ("checkpoint.every_n_steps=1",), ("trainer.detect_anomaly=true",)],
    ids=["epoch-checkpoints", "step-checkpoints", "detect-anomaly"],
)
def test_a_diverging_run_stops_and_keeps_the_checkpoints_from_before(extra, run_train):
    result = run_train(*TINY, *DIVERGING, "trainer.epochs=3", *extra)

    line = assert_fault(result.output, result.returncode, errors.EXIT_DIVERGED, "optimizer.lr")
    assert "trainer.grad_clip" in line and "trainer.precision=32" in line
    if not extra or "every_n_steps" in extra[0]:
        assert "at step " in line  # the step it appeared at: 5 to 8, epoch 2's
    assert summary(result.run_dir)["status"] == "diverged"
    checkpoints = result.run_dir / "checkpoints"
    for name in ("last.pt", "best.pt"):
        state = load(checkpoints / name)
        assert_finite(state)  # never a checkpoint from NaN weights
    assert load(checkpoints / "best.pt")["epoch"] == 1
    assert load(checkpoints / "last.pt")["global_step"] <= 8
    assert [row[0] for row in assert_whole_metrics(result.run_dir)] == ["1"]


# 2. Out of memory ------------------------------------------------------------------------


def test_out_of_memory_is_one_line_with_the_batch_size(start_train_here, tmp_path):
    """CPU memory really runs out: once epoch 1 is saved, the process's address space is
    capped (prlimit) at what it uses, so the next large allocation of a step fails."""
    run_dir = tmp_path / "run"
    big = ("data.image_size=128", "trainer.limit_train_batches=2", "trainer.epochs=50")
    process = start_train_here(*TINY, *big, run_dir=run_dir)
    wait_for(run_dir / "checkpoints/last.pt", process)
    status = Path(f"/proc/{process.pid}/status").read_text()
    in_use_kb = int(next(x for x in status.splitlines() if x.startswith("VmSize")).split()[1])
    resource.prlimit(process.pid, resource.RLIMIT_AS, (in_use_kb * 1024, resource.RLIM_INFINITY))
    output, _ = process.communicate(timeout=300)

    line = assert_fault(output, process.returncode, errors.EXIT_OUT_OF_MEMORY, "out of CPU memory")
    for fix in ("data.batch_size=32", "trainer.accumulate_grad_batches", "trainer.precision=bf16"):
        assert fix in line
    assert summary(run_dir)["status"] == "out_of_memory"
    # Nothing half-written: a later epoch may have been saved before the cap bit (a race this
    # test cannot close), so the promise checked is that last.pt loads and no temporary is left.
    assert load(run_dir / "checkpoints/last.pt")["epoch"] >= 1
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    assert_whole_metrics(run_dir)


# 3. Ctrl-C -------------------------------------------------------------------------------


def test_ctrl_c_finishes_the_step_saves_and_resume_continues(start_train_here, run_train, tmp_path):
    """SIGINT to the run and to its workers, as a terminal's Ctrl-C sends it: the step ends,
    last.pt is saved, the workers do not die under the main process, and resume= finishes."""
    run_dir = tmp_path / "run"
    process = start_train_here(*TINY, "data.num_workers=2", "trainer.epochs=4", run_dir=run_dir)
    wait_for(run_dir / "checkpoints/last.pt", process)
    for pid in [process.pid, *children(process.pid)]:
        os.kill(pid, signal.SIGINT)
    output, _ = process.communicate(timeout=240)

    assert process.returncode == 128 + signal.SIGINT, output[-3000:]
    assert "Traceback (most recent call last)" not in output, output[-3000:]
    assert "Error: " not in output, output[-3000:]
    assert f"Continue with: python train.py resume={run_dir}" in output
    assert summary(run_dir)["status"] == "interrupted"
    state = load(run_dir / "checkpoints/last.pt")
    assert state["global_step"] >= 4
    assert_whole_metrics(run_dir)

    resumed = run_train(f"resume={run_dir}", run_dir=run_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert summary(run_dir)["status"] == "completed"
    assert [row[0] for row in assert_whole_metrics(run_dir)] == ["1", "2", "3", "4"]


def test_a_second_ctrl_c_stops_at_once(start_train_here, tmp_path):
    """The first SIGINT lands while validation runs (long: the whole split at 64 px); the
    second stops there, without the epoch's save: last.pt stays the one from before."""
    run_dir = tmp_path / "run"
    slow_validation = (
        "data.image_size=64",
        "trainer.limit_val_batches=null",
        "trainer.limit_train_batches=2",
        "checkpoint.every_n_steps=2",  # last.pt right before validation starts
    )
    process = start_train_here(*TINY, *slow_validation, "trainer.epochs=3", run_dir=run_dir)
    wait_for(run_dir / "checkpoints/last.pt", process)
    process.send_signal(signal.SIGINT)
    wait_for_line(process, "SIGINT received")
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=240)

    assert process.returncode == 128 + signal.SIGINT, output[-3000:]
    assert "Interrupted again: stopped at once" in output, output[-3000:]
    assert "Traceback (most recent call last)" not in output, output[-3000:]
    assert summary(run_dir)["status"] == "interrupted"
    state = load(run_dir / "checkpoints/last.pt")
    assert (state["epoch"], state["global_step"]) == (0, 2)  # the epoch's save never happened
    assert not (run_dir / "metrics.csv").exists() or assert_whole_metrics(run_dir) == []


# 4. Disk full ----------------------------------------------------------------------------


def limited_file_size() -> None:
    """In the child: files stop growing at 1 MiB (a checkpoint is ~4.5 MB; summary, metrics
    and logs are far smaller), and the signal that would kill the process is ignored, so
    a write fails with EFBIG as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))


def train_with_small_disk(
    base: Path, *overrides: str, disk: Callable[[], None] | None = limited_file_size
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "train.py", *overrides],
        cwd=REPO_ROOT,
        env=train_env(base),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=disk,
    )


@pytest.fixture
def one_saved_epoch(run_train) -> Path:
    first = run_train(*TINY, "trainer.epochs=1")
    assert first.returncode == 0, first.output[-3000:]
    return first.run_dir


def test_a_full_disk_stops_the_run_with_the_previous_checkpoint_whole(one_saved_epoch, tmp_path):
    run_dir = one_saved_epoch
    before = file_hash(run_dir / "checkpoints/last.pt")
    result = train_with_small_disk(tmp_path, f"resume={run_dir}", "trainer.epochs=3")
    output = result.stdout + result.stderr

    last = run_dir / "checkpoints/last.pt"
    assert_fault(output, result.returncode, errors.EXIT_WRITE_FAILED, f"could not write {last}")
    assert "free disk space" in output
    assert summary(run_dir)["status"] == "write_failed"
    assert file_hash(last) == before
    assert load(last)["epoch"] == 1
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # no temporary file left
    # Epoch 2 ran and its row was written before its checkpoint failed: the record is true.
    assert [row[0] for row in assert_whole_metrics(run_dir)] == ["1", "2"]

    # With space again, a resume from epoch 1 redoes epoch 2 and trims its stale row.
    again = train_with_small_disk(tmp_path, f"resume={run_dir}", "trainer.epochs=3", disk=None)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert summary(run_dir)["status"] == "completed"
    assert [row[0] for row in assert_whole_metrics(run_dir)] == ["1", "2", "3"]


def test_on_error_warn_trains_on_past_a_full_disk(one_saved_epoch, tmp_path):
    run_dir = one_saved_epoch
    result = train_with_small_disk(
        tmp_path, f"resume={run_dir}", "trainer.epochs=3", "checkpoint.on_error=warn"
    )
    output = result.stdout + result.stderr

    assert result.returncode == 0, output[-3000:]
    assert output.count("not saved (checkpoint.on_error=warn, training goes on)") == 2
    record = summary(run_dir)
    assert record["status"] == "completed"
    assert record["failed_checkpoint_saves"] == 2
    assert record["best"]["epoch"] == 1  # the best that exists on disk
    assert load(run_dir / "checkpoints/best.pt")["epoch"] == 1
    assert [row[0] for row in assert_whole_metrics(run_dir)] == ["1", "2", "3"]
