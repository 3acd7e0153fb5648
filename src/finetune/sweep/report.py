"""The sweep report: index.html beside summary.csv, the leaderboard and every job's curves.

Drawn once when the sweep ends (summary.py's `finish`), from the same rows as summary.csv.
A report that fails to draw is a warning: the sweep's results are in summary.csv regardless.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INDEX = "index.html"
CURVES = "curves.png"
SHOWN = ("job", "status", "best", "test", "wall_time_s", "overrides", "error")


def write_sweep_report(
    sweep_dir: Path, rows: list[dict[str, Any]], monitor: str, mode: str
) -> Path | None:
    """sweep_dir/index.html (and curves.png of all jobs that wrote metrics); rows best first."""
    from finetune.records.report_page import write_sweep_page

    try:
        curves = draw_curves(sweep_dir, monitor)
        columns = [f"best {monitor}" if c == "best" else c for c in SHOWN]
        shown = [{**row, f"best {monitor}": row["best"]} for row in rows]
        page = write_sweep_page(
            sweep_dir / INDEX, f"Sweep {sweep_dir}", shown, columns, monitor, mode, curves
        )
    except Exception as error:  # noqa: BLE001 (the sweep itself is done; summary.csv is written)
        log.warning("The sweep report could not be written: %r", error)
        return None
    log.info("Sweep report: %s", page)
    return page


def draw_curves(sweep_dir: Path, monitor: str) -> bytes | None:
    """Every job's learning curves on one figure; None while no job has written metrics."""
    from finetune.records.curves import plot_runs

    if not any(sweep_dir.rglob("metrics.csv")):
        return None
    return plot_runs([sweep_dir], sweep_dir / CURVES, monitor).read_bytes()
