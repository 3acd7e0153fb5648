"""k-fold cross-validation over a sweep: mean and standard deviation of each fold group.

`python train.py -m data.folds=5 data.fold=0,1,2,3,4` runs one job per fold; jobs whose
overrides agree but for `data.fold=` form a group (a grid over other keys gives one group per
setting). For each group, folds.csv in the sweep directory and the log give the mean and
(sample) standard deviation of the best monitored value and of the test metric over its
finished folds.
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path
from typing import Any

from finetune.safety.atomic import write_text

FOLDS_CSV = "folds.csv"
FOLD_KEY = "data.fold="
COLUMNS = (
    "setting",
    "folds",
    "finished",
    "best_mean",
    "best_std",
    "test_mean",
    "test_std",
)


def fold_groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows of jobs that name a data.fold, keyed by their other overrides."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        items = row["overrides"].split()
        if not any(item.startswith(FOLD_KEY) for item in items):
            continue
        setting = " ".join(item for item in items if not item.startswith(FOLD_KEY))
        groups.setdefault(setting, []).append(row)
    return groups


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None where there are too few values)."""
    if not values:
        return None, None
    spread = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), spread


def fold_summary(rows: list[dict[str, Any]], finished: tuple[str, ...]) -> list[dict[str, Any]]:
    """One record per fold group: its folds, how many finished, and the statistics."""
    records = []
    for setting, group in fold_groups(rows).items():
        done = [row for row in group if row["status"] in finished]
        best = mean_std([row["best"] for row in done if row["best"] is not None])
        test = mean_std([row["test"] for row in done if row["test"] is not None])
        records.append(
            {
                "setting": setting,
                "folds": len(group),
                "finished": len(done),
                "best_mean": best[0],
                "best_std": best[1],
                "test_mean": test[0],
                "test_std": test[1],
            }
        )
    return records


def write_fold_summary(
    sweep_dir: Path, rows: list[dict[str, Any]], finished: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Write folds.csv (atomically) when the sweep ran folds; return its records."""
    records = fold_summary(rows, finished)
    if not records:
        return records
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(records)
    write_text(sweep_dir / FOLDS_CSV, buffer.getvalue())
    return records


def fold_table(records: list[dict[str, Any]], monitor: str) -> str:
    """`best val/acc 0.9612 ± 0.0100 | test/acc ...` per fold group, for the log."""
    test_metric = "test/" + monitor.split("/", 1)[-1]
    lines = ["Cross-validation (mean ± std over folds):"]
    for record in records:
        best = plus_minus(record["best_mean"], record["best_std"])
        test = plus_minus(record["test_mean"], record["test_std"])
        setting = record["setting"] or "(no other overrides)"
        lines.append(
            f"{record['finished']}/{record['folds']} folds  best {monitor} {best}  "
            f"{test_metric} {test}  {setting}"
        )
    return "\n".join(lines)


def plus_minus(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}")
