"""The sweep summary (sweep/summary.py): rows from job directories, summary.csv, the leaderboard."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml
from hydra.core.utils import JobReturn, JobStatus

from finetune.sweep.summary import collect_rows, job_outcome, leaderboard, write_csv


def make_job(sweep: Path, num: int, overrides: list[str], summary: dict | None) -> Path:
    """A job directory as Hydra and run() leave it: .hydra/{hydra,overrides}.yaml, summary.json."""
    run_dir = sweep / str(num)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def completed(best: float, test: float) -> dict:
    return {
        "status": "completed",
        "best": {"score": best},
        "test": {"test/acc": test, "test/loss": 0.5},
        "wall_time_s": 3.5,
    }


def test_rows_come_from_job_directories_in_job_order(tmp_path: Path) -> None:
    for num in (10, 2, 0):  # job 10 sorts after job 2: numbers, not names
        make_job(tmp_path, num, ["debug=fast", f"seed={num}"], completed(0.1 * num, 0.05 * num))
    make_job(tmp_path, 3, ["debug=fast", "seed=3"], None)  # started, no summary yet
    rows = collect_rows(tmp_path, "val/acc")
    assert [row["job"] for row in rows] == [0, 2, 3, 10]
    assert rows[1]["best"] == 0.2 and rows[1]["test"] == 0.1 and rows[1]["wall_time_s"] == 3.5
    assert rows[1]["overrides"] == "debug=fast seed=2"
    assert rows[1]["run_dir"] == str(tmp_path / "2")
    assert rows[2]["status"] == "starting" and rows[2]["best"] is None


def test_csv_has_one_row_per_job_and_the_columns(tmp_path: Path) -> None:
    make_job(tmp_path, 0, ["seed=0"], completed(0.9, 0.8))
    failed = {"status": "failed", "error": "data.batch_size=0 must be a positive integer"}
    make_job(tmp_path, 1, ["seed=1"], failed)
    write_csv(tmp_path, "val/acc")
    with open(tmp_path / "summary.csv") as file:
        rows = list(csv.DictReader(file))
    assert [r["job"] for r in rows] == ["0", "1"]
    assert set(rows[0]) >= {"job", "overrides", "best", "test", "status", "wall_time_s", "run_dir"}
    assert (rows[0]["status"], float(rows[0]["best"]), float(rows[0]["test"])) == (
        "completed",
        0.9,
        0.8,
    )
    assert rows[1]["status"] == "failed" and "batch_size=0" in rows[1]["error"]
    assert not list(tmp_path.glob(".summary.csv.*")), "the temporary file is left behind"


def test_leaderboard_sorts_by_mode_and_puts_failures_last(tmp_path: Path) -> None:
    make_job(tmp_path, 0, ["x=1", "lr=0.1"], completed(0.5, 0.4))
    make_job(tmp_path, 1, ["x=1", "lr=0.2"], {"status": "failed", "error": "boom"})
    make_job(tmp_path, 2, ["x=1", "lr=0.3"], completed(0.9, 0.7))
    rows = collect_rows(tmp_path, "val/acc")
    board = leaderboard(rows, "val/acc", "max", tmp_path / "summary.csv").splitlines()
    body = [line.split()[0] for line in board[2:-1]]
    assert body == ["2", "0", "1"]
    assert "x=1" not in "\n".join(board[2:-1]), "overrides shared by all jobs are left out"
    assert "(boom)" in board[-2] and "3 jobs, 1 not completed" in board[-1]
    ascending = leaderboard(rows, "val/loss", "min", tmp_path / "summary.csv").splitlines()
    assert [line.split()[0] for line in ascending[2:-1]] == ["0", "2", "1"]


def test_job_outcome_names_failed_and_pruned_jobs() -> None:
    class TrialPruned(Exception):  # stands in for optuna's, which is matched by name
        pass

    ok = JobReturn(status=JobStatus.COMPLETED, _return_value=0.5)
    bad = JobReturn(status=JobStatus.FAILED, _return_value=ValueError("Traceback\nbad lr: -1"))
    pruned = JobReturn(status=JobStatus.FAILED, _return_value=TrialPruned("at epoch 2"))
    assert job_outcome(ok) == ("completed", "")
    assert job_outcome(bad) == ("failed", "bad lr: -1")
    assert job_outcome(pruned) == ("pruned", "at epoch 2")
