"""Checkpoints you can trust: exact resume, preemption, kill -9, top-k, refused pickles.

Every run here is tiny (test_resnet at 16x16, 4 batches an epoch) so that the comparisons
between an uninterrupted run and an interrupted-then-resumed one stay cheap.
"""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest
import torch
from processes import wait_for, wait_for_step

TINY = (
    "model=test_resnet",
    "data.image_size=16",
    "data.batch_size=32",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.progress_bar=false",
    "logger=csv",
)
# Columns that measure time, which no two runs share.
TIMING_COLUMNS = {"images_per_s", "epoch_time_s"}


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    weights_a, weights_b = load(a)["model_state_dict"], load(b)["model_state_dict"]
    assert weights_a.keys() == weights_b.keys()
    different = [k for k in weights_a if not torch.equal(weights_a[k], weights_b[k])]
    assert not different, f"weights differ: {different[:5]}"


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, train_in):
    """4 epochs without interruption, cosine schedule: the reference."""
    base = tmp_path_factory.mktemp("straight")
    result = train_in(base, *TINY, "trainer.epochs=4")
    assert result.returncode == 0, result.output[-2000:]
    return result.run_dir


def test_resume_after_two_epochs_is_bitwise_identical(run_train, tmp_path):
    # A constant LR: extending the run from 2 to 4 epochs changes no schedule.
    first = run_train(*TINY, "scheduler=none", "trainer.epochs=2")
    assert first.returncode == 0, first.output[-2000:]
    resumed = run_train(f"resume={first.run_dir}", "trainer.epochs=4", run_dir=first.run_dir)
    assert resumed.returncode == 0, resumed.output[-2000:]
    straight = run_train(*TINY, "scheduler=none", "trainer.epochs=4", run_dir=tmp_path / "s")
    assert straight.returncode == 0
    assert_same_weights(first.run_dir / "checkpoints/last.pt", tmp_path / "s/checkpoints/last.pt")
    assert metric_rows(first.run_dir) == metric_rows(tmp_path / "s")
    assert len(metric_rows(first.run_dir)) == 4
    # The original .hydra/ files stay; the resume's own are kept beside them.
    assert (first.run_dir / ".hydra/config.yaml").is_file()
    assert any(p.name.startswith("resume-") for p in (first.run_dir / ".hydra").iterdir())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_preempted_run_resumes_to_the_same_end(
    signum, straight_run, start_train_here, run_train, tmp_path
):
    run_dir = tmp_path / "run"
    process = start_train_here(*TINY, "trainer.epochs=4", run_dir=run_dir)
    wait_for(run_dir / "checkpoints/last.pt", process)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, output[-2000:]
    assert "resume=" in output
    summary = (run_dir / "summary.json").read_text()
    assert '"status": "preempted"' in summary or '"status": "completed"' in summary
    load(run_dir / "checkpoints/last.pt")

    resumed = run_train(f"resume={run_dir}", run_dir=run_dir)
    assert resumed.returncode == 0, resumed.output[-2000:]
    assert '"status": "completed"' in (run_dir / "summary.json").read_text()
    assert_same_weights(run_dir / "checkpoints/last.pt", straight_run / "checkpoints/last.pt")
    assert metric_rows(run_dir) == metric_rows(straight_run)


def test_checkpoints_written_by_the_thread_resume_to_the_same_end(
    straight_run, start_train_here, run_train, tmp_path
):
    """checkpoint.background=true (what `auto` picks on a GPU): a preemption waits for the
    write in flight, and the files are the ones an in-line save writes."""
    run_dir = tmp_path / "run"
    threaded = (*TINY, "trainer.epochs=4", "checkpoint.background=true")
    process = start_train_here(*threaded, run_dir=run_dir)
    wait_for(run_dir / "checkpoints/last.pt", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output[-2000:]

    resumed = run_train(f"resume={run_dir}", run_dir=run_dir)
    assert resumed.returncode == 0, resumed.output[-2000:]
    assert_same_weights(run_dir / "checkpoints/last.pt", straight_run / "checkpoints/last.pt")
    assert metric_rows(run_dir) == metric_rows(straight_run)
    last = load(run_dir / "checkpoints/last.pt")
    assert load(run_dir / "checkpoints/best.pt")["epoch"] == last["best"]["epoch"]
    kept = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert kept == {p.name for p in (straight_run / "checkpoints").iterdir()}


@pytest.mark.slow
@pytest.mark.parametrize("step", [1, 6, 11])  # in epochs 1, 2 and 3
def test_kill_9_leaves_a_whole_checkpoint_and_resume_completes(
    step, straight_run, start_train_here, run_train, tmp_path
):
    # A save every step, so the kill often lands during one; it lands once `step` is saved.
    run_dir = tmp_path / "run"
    process = start_train_here(
        *TINY, "trainer.epochs=4", "checkpoint.every_n_steps=1", run_dir=run_dir
    )
    wait_for_step(run_dir, process, step)
    process.kill()
    process.communicate(timeout=60)
    state = load(run_dir / "checkpoints/last.pt")  # whole, whatever the instant
    assert {"epoch", "model_state_dict", "optimizer_state_dict", "loss"} <= state.keys()

    resumed = run_train(f"resume={run_dir}", run_dir=run_dir)
    assert resumed.returncode == 0, resumed.output[-2000:]
    assert_same_weights(run_dir / "checkpoints/last.pt", straight_run / "checkpoints/last.pt")
    assert metric_rows(run_dir) == metric_rows(straight_run)


def test_top_k_survives_a_resume(run_train):
    first = run_train(
        *TINY, "trainer.epochs=2", "checkpoint.save_top_k=2", "monitor=val/loss", "mode=min"
    )
    assert first.returncode == 0, first.output[-2000:]
    resumed = run_train(f"resume={first.run_dir}", "trainer.epochs=5", run_dir=first.run_dir)
    assert resumed.returncode == 0, resumed.output[-2000:]
    checkpoints = first.run_dir / "checkpoints"
    top = sorted(p.name for p in checkpoints.glob("epoch=*.pt"))
    state = load(checkpoints / "last.pt")
    assert len(top) == 2
    assert sorted(Path(p).name for _, p in state["top_k"]) == top
    losses = [score for score, _ in state["top_k"]]
    assert losses == sorted(losses)  # best (lowest loss) first
    assert state["best"]["score"] == losses[0]
    for path in checkpoints.glob("*.pt"):
        load(path)  # every file opens with weights_only=True


def test_resume_refuses_an_unsafe_override_and_keeps_the_run(run_train):
    first = run_train(*TINY, "trainer.epochs=1")
    assert first.returncode == 0
    before = (first.run_dir / "metrics.csv").read_text()
    refused = run_train(f"resume={first.run_dir}", "data.batch_size=8", run_dir=first.run_dir)
    assert refused.returncode == 2
    assert "data.batch_size" in refused.output
    assert "Traceback" not in refused.output
    assert (first.run_dir / "metrics.csv").read_text() == before


def test_resume_of_a_directory_without_checkpoint_is_a_clear_error(run_train, tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    result = run_train(f"resume={empty}", run_dir=empty)
    assert result.returncode == 2
    assert "no checkpoints/last.pt" in result.output


def test_truncated_checkpoint_names_the_file_and_a_whole_one(run_train):
    first = run_train(*TINY, "trainer.epochs=2")
    assert first.returncode == 0
    last = first.run_dir / "checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    result = run_train(f"resume={first.run_dir}", run_dir=first.run_dir)
    assert result.returncode == 2
    assert f"{last} is incomplete or corrupted" in result.output
    assert "is whole" in result.output
    assert "Traceback" not in result.output
    assert (first.run_dir / "checkpoints/best.pt").is_file()


class Evil:
    """Unpickling this runs a shell command: what a hostile checkpoint looks like."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_pickled_code_is_refused(run_train, tmp_path):
    marker = tmp_path / "pwned"
    # In a run directory's checkpoints/, where resume= takes a checkpoint from.
    evil = tmp_path / "evil_run" / "checkpoints" / "last.pt"
    (tmp_path / "evil_run" / ".hydra").mkdir(parents=True)
    evil.parent.mkdir()
    torch.save({"model_state_dict": Evil(marker)}, evil)
    for override in (f"model.pretrained={evil}", f"resume={evil}"):
        result = run_train(*TINY, override, run_dir=tmp_path / f"run{len(override)}")
        assert result.returncode == 2, result.output[-2000:]
        assert "refused" in result.output
    assert not marker.exists()


def test_resume_on_an_image_folder_with_the_decoded_cache_is_bitwise(
    run_train, tmp_path, image_tree
):
    """Cached views, augmented on tensors by a loader worker, resume to the same weights."""
    folder = (
        *TINY,
        "data=image_folder",
        f"data.root={image_tree}",
        "data.batch_size=8",
        "data.cache=memory",
        "data.augment=true",
        "data.num_workers=1",
        "scheduler=none",
    )
    first = run_train(*folder, "trainer.epochs=1")
    assert first.returncode == 0, first.output[-2000:]
    assert "Decoded images cached (data.cache=memory)" in first.output
    resumed = run_train(f"resume={first.run_dir}", "trainer.epochs=2", run_dir=first.run_dir)
    assert resumed.returncode == 0, resumed.output[-2000:]
    straight = run_train(*folder, "trainer.epochs=2", run_dir=tmp_path / "s")
    assert straight.returncode == 0, straight.output[-2000:]
    assert_same_weights(first.run_dir / "checkpoints/last.pt", tmp_path / "s/checkpoints/last.pt")
    assert metric_rows(first.run_dir) == metric_rows(tmp_path / "s")
