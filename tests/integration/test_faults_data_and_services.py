"""Faults from outside the training step, each caused for real in a `python train.py`
subprocess: the data (a killed loader worker, a corrupted image), the W&B service, and a second
run in the same run directory. The checks are those of test_faults_cli.py (fault_checks.py).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from fault_checks import TINY, assert_fault, assert_whole_metrics, file_hash, load, summary
from processes import children, command_of, descendants, wait_for
from wandb_records import read_run

from finetune.safety import errors

pytestmark = pytest.mark.slow


# 5. A data loader worker dies ------------------------------------------------------------


# Images read by two worker processes, for long enough to meet trouble mid-run.
LONG_FOLDER_RUN = (
    "data=image_folder",
    "data.batch_size=4",
    "data.num_workers=2",
    "trainer.epochs=50",
)


def test_a_killed_worker_is_named_with_its_sample(start_train_here, image_tree, tmp_path):
    run_dir = tmp_path / "run"
    process = start_train_here(*TINY, *LONG_FOLDER_RUN, f"data.root={image_tree}", run_dir=run_dir)
    wait_for(run_dir / "checkpoints/last.pt", process)
    workers = [pid for pid in children(process.pid) if "train.py" in command_of(pid)]
    assert len(workers) >= 2, workers
    os.kill(workers[0], signal.SIGKILL)  # the first born: a training loader's worker
    output, _ = process.communicate(timeout=240)  # no hang

    # How the death reads ("killed by SIGKILL" or "exited unexpectedly") depends on which of
    # torch's checks notices it first; the worker, its pid and its sample are named either way.
    line = assert_fault(output, process.returncode, errors.EXIT_DATA_FAILED, f"(pid {workers[0]})")
    assert "data loader worker" in line and "sample" in line and f"{image_tree}" in line
    assert "data.num_workers" in line
    assert summary(run_dir)["status"] == "data_error"
    assert load(run_dir / "checkpoints/last.pt")["epoch"] >= 1
    assert_whole_metrics(run_dir)


# 6. A corrupted image met mid-epoch ------------------------------------------------------


def truncate(path: Path) -> None:
    """A PNG cut in half: its header opens, its pixels do not."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_corrupted_image_stops_the_run_naming_the_file(start_train_here, image_tree, tmp_path):
    """The file is damaged while the run is going: the next epoch meets it (read from the
    file every epoch: data.cache=none; a decoded-image cache reads each file once)."""
    run_dir = tmp_path / "run"
    broken = image_tree / "train" / "b" / "3.png"
    folder = (*TINY, *LONG_FOLDER_RUN, f"data.root={image_tree}", "data.cache=none")
    process = start_train_here(*folder, run_dir=run_dir)
    wait_for(run_dir / "checkpoints/last.pt", process)
    truncate(broken)
    output, _ = process.communicate(timeout=240)

    line = assert_fault(
        output, process.returncode, errors.EXIT_DATA_FAILED, f"unreadable image {broken}"
    )
    assert "data loader worker" in line and "data.on_bad_image=skip" in line
    assert summary(run_dir)["status"] == "data_error"
    assert str(broken) in summary(run_dir)["error"]
    assert load(run_dir / "checkpoints/last.pt")["epoch"] >= 1
    assert_whole_metrics(run_dir)


def test_on_bad_image_skip_counts_the_file_in_the_summary(run_train, image_tree):
    broken = image_tree / "train" / "b" / "3.png"
    truncate(broken)
    result = run_train(
        *TINY,
        "data=image_folder",
        f"data.root={image_tree}",
        "data.batch_size=4",
        "data.num_workers=2",
        "data.on_bad_image=skip",
        "trainer.epochs=2",
    )

    assert result.returncode == 0, result.output[-3000:]
    assert f"skipped unreadable image {broken}" in result.output
    record = summary(result.run_dir)
    assert record["status"] == "completed"
    assert record["skipped_images"] == {"count": 1, "files": [str(broken)]}
    assert load(result.run_dir / "checkpoints/last.pt")["epoch"] == 2


# 7. The W&B service fails ----------------------------------------------------------------


def test_wandb_online_at_an_unreachable_host_trains_on_offline(run_train, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: refused
    result = run_train(*TINY, "trainer.epochs=2", "logger=[csv,wandb]", "logger.wandb.mode=online")

    assert result.returncode == 0, result.output[-3000:]
    warnings = [line for line in result.output.splitlines() if "W&B" in line and "WARN" in line]
    assert len(warnings) == 1 and "127.0.0.1:9 is unreachable" in warnings[0], warnings
    assert summary(result.run_dir)["status"] == "completed"
    assert len(read_run(result.run_dir).history) > 0  # the records went on, offline
    assert load(result.run_dir / "checkpoints/last.pt")["epoch"] == 2


def test_the_wandb_service_killed_mid_run_is_one_warning(start_train_here, tmp_path):
    run_dir = tmp_path / "run"
    process = start_train_here(
        *TINY,
        "trainer.epochs=3",
        "trainer.log_every_n_steps=1",
        "logger=[csv,wandb]",
        run_dir=run_dir,
    )
    wait_for(run_dir / "checkpoints/last.pt", process)
    service = [pid for pid in descendants(process.pid) if "wandb-core" in command_of(pid)]
    assert service, [command_of(pid) for pid in descendants(process.pid)]
    for pid in service:
        os.kill(pid, signal.SIGKILL)
    output, _ = process.communicate(timeout=240)

    assert process.returncode == 0, output[-3000:]
    assert "Traceback (most recent call last)" not in output, output[-3000:]
    warnings = [line for line in output.splitlines() if "records stop here" in line]
    assert len(warnings) == 1, output[-3000:]
    assert summary(run_dir)["status"] == "completed"
    assert [row[0] for row in assert_whole_metrics(run_dir)] == ["1", "2", "3"]
    assert load(run_dir / "checkpoints/last.pt")["epoch"] == 3


# 8. Two runs in one run directory --------------------------------------------------------


def test_a_second_run_in_the_same_directory_refuses_and_resume_takes_over(
    start_train_here, run_train, tmp_path
):
    run_dir = tmp_path / "run"
    first = start_train_here(*TINY, "trainer.epochs=50", run_dir=run_dir)
    wait_for(run_dir / "checkpoints/last.pt", first)
    config_before = file_hash(run_dir / ".hydra/config.yaml")

    second = run_train(*TINY, "trainer.epochs=2", "seed=7", run_dir=run_dir)

    assert_fault(second.output, second.returncode, errors.EXIT_RUN_DIR_IN_USE, f"PID {first.pid}")
    assert f"run directory {run_dir} is in use" in second.output
    assert file_hash(run_dir / ".hydra/config.yaml") == config_before  # Hydra never started
    assert summary(run_dir)["status"] == "running"  # the first run's, untouched
    assert first.poll() is None

    first.kill()  # kill -9: its lock file stays behind, stale
    first.communicate(timeout=60)
    assert str(first.pid) in (run_dir / "run.lock").read_text()
    last = load(run_dir / "checkpoints/last.pt")  # whole
    resumed = run_train(f"resume={run_dir}", "trainer.epochs=" + str(last["epoch"] + 1))
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert f"taking over the stale lock of PID {first.pid}" in resumed.output
    assert summary(run_dir)["status"] == "completed"
    assert not (run_dir / "run.lock").exists()  # released at exit


def test_errors_before_hydra_starts_are_one_line_too(run_train, tmp_path):
    """resume= and the lock are handled before Hydra: still one line and an exit status."""
    result = run_train(f"resume={tmp_path / 'absent'}")
    assert_fault(result.output, result.returncode, errors.EXIT_BAD_INPUT, "no such run directory")
