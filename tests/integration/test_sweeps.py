"""Sweeps end to end: grid multirun, a failing job, a resumed Optuna study, joblib, submitit.

Every job is a tiny run (test_resnet, debug=fast, 16-pixel digits); bad-input checks stop
before any job and are quick.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TRAIN_TIMEOUT_S, error_lines
from processes import command_of, descendants, wait_for, wait_for_step

TINY = (
    "model=test_resnet",
    "debug=fast",
    "data.image_size=16",
    "trainer.progress_bar=false",
    "logger=csv",
)


def sweep_dirs(log_dir: Path) -> list[Path]:
    """The sweep directories under log_dir/multirun/DATE/."""
    return sorted(p for p in (log_dir / "multirun").glob("*/*") if p.is_dir())


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv") as file:
        return list(csv.DictReader(file))


def job_dirs(sweep_dir: Path) -> dict[int, Path]:
    return {int(p.name): p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()}


def overrides_of(run_dir: Path) -> list[str]:
    return yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())


@pytest.mark.slow
def test_grid_makes_a_run_dir_per_job_and_a_summary(run_train, tmp_path: Path) -> None:
    result = run_train(
        "-m", *TINY, f"paths.log_dir={tmp_path}", "optimizer.lr=0.001,0.01", "seed=0,1",
        own_dir=True,
    )  # fmt: skip
    assert result.returncode == 0, result.output[-3000:]
    [sweep] = sweep_dirs(tmp_path)
    jobs = job_dirs(sweep)
    assert sorted(jobs) == [0, 1, 2, 3]
    combos = {
        tuple(o for o in overrides_of(d) if o.startswith(("optimizer.lr", "seed")))
        for d in jobs.values()
    }
    assert combos == {
        (f"optimizer.lr={lr}", f"seed={seed}") for lr in ("0.001", "0.01") for seed in (0, 1)
    }
    for run_dir in jobs.values():  # each a complete run directory
        for name in ("hparams.yaml", "metrics.csv", "summary.json", "train.log"):
            assert (run_dir / name).is_file(), run_dir / name
        assert (run_dir / "checkpoints" / "best.pt").is_file()
    rows = read_summary(sweep)
    assert [row["job"] for row in rows] == ["0", "1", "2", "3"]
    for row in rows:
        assert row["status"] == "completed" and row["monitor"] == "val/acc"
        assert 0 <= float(row["best"]) <= 1 and 0 <= float(row["test"]) <= 1
        assert float(row["wall_time_s"]) > 0
        assert Path(row["run_dir"]) == jobs[int(row["job"])]
        assert row["overrides"].split() == overrides_of(Path(row["run_dir"]))
    assert "Sweep leaderboard" in result.output and "4 jobs, 0 not completed" in result.output
    page = (sweep / "index.html").read_text()  # the sweep report: leaderboard and all curves
    assert all(row["overrides"] in page for row in rows)
    assert "data:image/png;base64," in page and (sweep / "curves.png").is_file()


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_others_run(run_train, tmp_path: Path) -> None:
    result = run_train(
        "-m", *TINY, f"paths.log_dir={tmp_path}", "data.batch_size=16,0,32,64", own_dir=True
    )
    assert result.returncode != 0, "a sweep with a failed job must say so in its exit status"
    [sweep] = sweep_dirs(tmp_path)
    rows = {row["job"]: row for row in read_summary(sweep)}
    assert [rows[j]["status"] for j in "0123"] == ["completed", "failed", "completed", "completed"]
    assert "data.batch_size=0" in rows["1"]["error"]
    assert (Path(rows["3"]["run_dir"]) / "checkpoints" / "best.pt").is_file()
    assert "4 jobs, 1 not completed" in result.output  # the leaderboard, printed all the same


def optuna_sweep(run_train, tmp_path: Path, storage: str, *extra: str):
    return run_train(
        "-m", "hparams_search=optuna", *TINY, f"paths.log_dir={tmp_path}",
        "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=resumable", "freeze=none", *extra, own_dir=True,
    )  # fmt: skip


@pytest.mark.slow
def test_optuna_study_in_sqlite_resumes(run_train, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'db' / 'optuna.db'}"  # db/ does not exist yet
    first = optuna_sweep(run_train, tmp_path, storage)
    assert first.returncode == 0, first.output[-3000:]
    second = optuna_sweep(run_train, tmp_path, storage)
    assert second.returncode == 0, second.output[-3000:]
    assert "resumable in" in second.output and "3 earlier trials" in second.output

    study = optuna.load_study(study_name="resumable", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 6
    lrs = [t.params["optimizer.lr"] for t in study.trials]
    assert len(set(lrs)) == 6, "the resumed search repeated earlier trials"
    # freeze=none on the command line replaces the search space's entry (no weights offline).
    assert set(study.trials[0].params) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "data.batch_size",
    }
    sweeps = sweep_dirs(tmp_path)
    assert len(sweeps) == 2
    for sweep in sweeps:
        assert [row["status"] for row in read_summary(sweep)] == ["completed"] * 3
        assert (sweep / "optimization_results.yaml").is_file()
    run_dir = Path(study.trials[4].user_attrs["run_dir"])
    assert run_dir.parent == sweeps[1] and (run_dir / "summary.json").is_file()


def test_unknown_search_space_key_fails_before_any_trial(run_train, tmp_path: Path) -> None:
    result = run_train(
        "-m", "hparams_search=optuna", f"paths.log_dir={tmp_path}",
        "optimizer.lrr=interval(0.1,0.2)", own_dir=True,
    )  # fmt: skip
    assert result.returncode == 2, result.output[-3000:]
    assert "Traceback" not in result.output
    [line] = error_lines(result.output)
    assert "optimizer.lrr" in line, line
    assert not list(tmp_path.glob("multirun/*/*/*/summary.json")), "a trial ran"


def test_unopenable_storage_fails_before_any_trial(run_train, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    storage = f"sqlite:///{blocker / 'optuna.db'}"
    result = run_train(
        "-m", "hparams_search=optuna", f"paths.log_dir={tmp_path}",
        f"hydra.sweeper.storage={storage}", own_dir=True,
    )  # fmt: skip
    assert result.returncode == 2, result.output[-3000:]
    [line] = error_lines(result.output)
    assert "hydra.sweeper.storage" in line and "cannot be opened" in line, line
    assert not list(tmp_path.glob("multirun/*/*/*/summary.json")), "a trial ran"


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher",
    [
        ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
        # resume=auto, as on a cluster: a requeued job continues from its own last.pt.
        ("hydra/launcher=submitit_local", "resume=auto"),
    ],
    ids=["joblib", "submitit_local"],
)
def test_launcher_jobs_share_one_sweep_dir(run_train, tmp_path: Path, launcher) -> None:
    result = run_train(
        "-m", *TINY, f"paths.log_dir={tmp_path}", *launcher, "seed=0,1", own_dir=True
    )
    assert result.returncode == 0, result.output[-3000:]
    # Jobs in other processes resolve the sweep dir too: they must find the sweep's own.
    [sweep] = sweep_dirs(tmp_path)
    assert sorted(job_dirs(sweep)) == [0, 1]
    rows = read_summary(sweep)
    assert [(row["job"], row["status"]) for row in rows] == [("0", "completed"), ("1", "completed")]


@pytest.mark.slow
def test_submitit_requeues_a_signalled_job_which_resumes_and_finishes(start_train_here, tmp_path):
    """USR2 is SLURM's time-limit warning to a submitit job (sent by hand here; submitit_local
    requeues as it does on SLURM). The job saves last.pt at that step, hands the signal to
    submitit, which requeues it, and the new attempt resumes (resume=auto) and finishes.

    The signal goes once a step checkpoint inside epoch 2 exists (a state): sent as soon as
    epoch 1's last.pt appeared, it could land before epoch 2's first step, and the resume would
    start at epoch 1's end, which is not what this test is about."""
    sweep = tmp_path / "sweep"
    process = start_train_here(
        "-m", *TINY, "trainer.epochs=3", "trainer.limit_train_batches=40",
        "checkpoint.every_n_steps=5", "hydra/launcher=submitit_local", "resume=auto",
        f"paths.log_dir={tmp_path}", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    run_dir = sweep / "0"
    wait_for(run_dir / "checkpoints/best.pt", process)  # epoch 1 ended: its row is written
    epoch_1_end = int(next(csv.DictReader((run_dir / "metrics.csv").open()))["step"])
    saved_step = wait_for_step(run_dir, process, epoch_1_end + 1)  # inside epoch 2
    # The job's process, then its data loader workers (same command line): parents come first.
    task = [pid for pid in descendants(process.pid) if "submitit.core._submit" in command_of(pid)]
    os.kill(task[0], signal.SIGUSR2)
    output, _ = process.communicate(timeout=TRAIN_TIMEOUT_S)

    assert process.returncode == 0, output[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "SIGUSR2 received" in log and "Handing SIGUSR2 to the launcher's handler" in log, log
    submitit_logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "Requeued job" in submitit_logs, submitit_logs[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    rows = list(csv.DictReader((run_dir / "metrics.csv").read_text().splitlines()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    resumed = re.search(r"Resumed at epoch (\d+), step (\d+)", log)
    assert resumed and int(resumed[2]) >= saved_step > epoch_1_end, log  # the signal's step
    assert [(row["job"], row["status"]) for row in read_summary(sweep)] == [("0", "completed")]
