"""The sweep summary: summary.csv in the sweep directory and a leaderboard, for any sweeper.

A Hydra callback (registered in conf/hydra/default.yaml) that reads what every job left in its
run directory -- .hydra/overrides.yaml, .hydra/hydra.yaml and summary.json -- and writes one row
per job. It rewrites summary.csv each time a job ends, so a killed sweep still has one, and once
more when the sweep ends, then logs a leaderboard sorted by the monitored metric.

Rows are rebuilt from the run directories rather than kept in memory because jobs end in other
processes or on other machines (joblib, submitit): the sweep directory is the only place they
all share. Hydra skips `on_multirun_end` when the sweeper raises (the basic sweeper does, after
all jobs ran, when one failed), so the final summary is also registered to run at exit.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from finetune.engine.rundir import RunPaths
from finetune.safety.atomic import write_text
from finetune.safety.errors import one_line
from finetune.sweep.folds import fold_table, write_fold_summary
from finetune.sweep.report import write_sweep_report

log = logging.getLogger(__name__)

SUMMARY = "summary.csv"
# A job that ended well: trained all its epochs, or stopped early (trainer.patience) and tested.
FINISHED = ("completed", "early_stopped")
COLUMNS = (
    "job",
    "status",
    "monitor",
    "best",
    "test",
    "wall_time_s",
    "overrides",
    "run_dir",
    "error",
)


class SweepSummary(Callback):
    """Writes `summary.csv` into the sweep directory and logs a leaderboard when a sweep ends."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.monitor, self.mode = "", "max"
        self.finished = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.monitor, self.mode = config.monitor, config.mode
        atexit.register(self.finish)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Runs where the job ran: complete its record, then refresh the sweep's summary.csv."""
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        status, error = job_outcome(job_return)
        if status not in ("completed", "refused"):  # refused: the directory is another run's
            mark_summary(run_dir, status, error)
            level = logging.INFO if status == "pruned" else logging.ERROR
            log.log(level, "Job %s %s: %s (the sweep goes on)", config.hydra.job.num, status, error)
        write_csv(Path(config.hydra.sweep.dir), config.monitor)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish()

    def finish(self) -> None:
        """The final summary.csv and the leaderboard; once, whether or not the sweeper raised."""
        if self.finished or self.sweep_dir is None:
            return
        self.finished = True
        rows = write_csv(self.sweep_dir, self.monitor)
        if rows:  # none when the sweeper stopped before any job (its error says why)
            log.info(leaderboard(rows, self.monitor, self.mode, self.sweep_dir / SUMMARY))
            folds = write_fold_summary(self.sweep_dir, rows, FINISHED)
            if folds:
                log.info(fold_table(folds, self.monitor))
            write_sweep_report(self.sweep_dir, ranked(rows, self.mode), self.monitor, self.mode)


def job_outcome(job_return: JobReturn) -> tuple[str, str]:
    """(status, error line) of a finished job, from what Hydra caught."""
    if job_return.status == JobStatus.COMPLETED:
        return "completed", ""
    error = job_return._return_value  # the exception; `.return_value` would re-raise it
    # An Optuna pruner stopped the trial: by name, so this module does not import optuna.
    # A fault says its own status (diverged, out_of_memory, ...: finetune.safety.errors).
    status = (
        "pruned" if type(error).__name__ == "TrialPruned" else getattr(error, "status", "failed")
    )
    return status, one_line(error)


def mark_summary(run_dir: Path, status: str, error: str) -> None:
    """Make summary.json say how the job ended, also when it failed before run() wrote one."""
    from finetune.engine.rundir import RunPaths, read_summary, write_summary

    paths = RunPaths(run_dir)
    summary = read_summary(paths) or {"run_dir": str(run_dir)}
    summary.update(status=status, error=error)
    write_summary(paths, summary)


def collect_rows(sweep_dir: Path, monitor: str) -> list[dict[str, Any]]:
    """One row per job directory under the sweep directory, in job order."""
    test_metric = "test/" + monitor.split("/", 1)[-1]
    rows = []
    for overrides_file in sweep_dir.glob("**/.hydra/overrides.yaml"):
        run_dir = overrides_file.parent.parent
        hydra_cfg = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
        summary = read_json(RunPaths(run_dir).summary)
        rows.append(
            {
                "job": hydra_cfg["job"]["num"],
                "status": summary.get("status", "starting"),
                "monitor": monitor,
                "best": (summary.get("best") or {}).get("score"),
                "test": (summary.get("test") or {}).get(test_metric),
                "wall_time_s": summary.get("wall_time_s"),
                "overrides": " ".join(yaml.safe_load(overrides_file.read_text()) or []),
                "run_dir": str(run_dir),
                "error": summary.get("error") or "",
            }
        )
    return sorted(rows, key=lambda row: row["job"])


def read_json(path: Path) -> dict[str, Any]:
    """A job's summary.json, or {} while the job has not written one yet."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_csv(sweep_dir: Path, monitor: str) -> list[dict[str, Any]]:
    """Rewrite summary.csv atomically: parallel jobs may end, and write, at the same moment."""
    rows = collect_rows(sweep_dir, monitor)
    if not rows:
        return rows
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(sweep_dir / SUMMARY, buffer.getvalue())
    return rows


def leaderboard(rows: list[dict[str, Any]], monitor: str, mode: str, path: Path) -> str:
    """A table of the jobs, best first; only the overrides that differ between jobs are shown."""
    shared = set.intersection(*(set(row["overrides"].split()) for row in rows)) if rows else set()
    test_metric = "test/" + monitor.split("/", 1)[-1]
    table = [["job", "status", f"best {monitor}", test_metric, "time (s)", "overrides"]]
    for row in ranked(rows, mode):
        varying = [item for item in row["overrides"].split() if item not in shared]
        table.append(
            [
                str(row["job"]),
                row["status"],
                fmt(row["best"]),
                fmt(row["test"]),
                fmt(row["wall_time_s"], ".1f"),
                " ".join(varying) + (f"  ({row['error']})" if row["error"] else ""),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in table
    ]
    failed = sum(row["status"] not in FINISHED for row in rows)
    early = sum(row["status"] == "early_stopped" for row in rows)
    stopped = f", {early} stopped early" if early else ""
    footer = f"{len(rows)} jobs, {failed} not completed{stopped}; summary: {path}"
    return "Sweep leaderboard:\n" + "\n".join(lines) + "\n" + footer


def ranked(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """Finished jobs best first by their monitored value, then the others in job order."""
    sign = -1.0 if mode == "max" else 1.0

    def rank(row: dict[str, Any]) -> tuple[float, int]:
        best = row["best"]
        usable = row["status"] in FINISHED and best is not None and math.isfinite(best)
        return (sign * best if usable else math.inf, row["job"])

    return sorted(rows, key=rank)


def fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)
