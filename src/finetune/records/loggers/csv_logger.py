"""metrics.csv, written with every logger choice, and curves.png drawn from it at the end."""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from finetune.records.loggers.base import Logger

log = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
CURVES_PNG = "curves.png"


class CSVLogger(Logger):
    """metrics.csv: one row per epoch, columns in a stable order, flushed every row.

    A resumed run appends to the file and keeps its header. At the end the learning curves
    are drawn from the file into curves.png (the same code as scripts/plot_runs.py).
    """

    def __init__(self, path: Path, monitor: str) -> None:
        self.path = path
        self.monitor = monitor
        self.columns: list[str] | None = None
        if path.exists() and path.stat().st_size > 0:
            with path.open(newline="") as handle:
                self.columns = next(csv.reader(handle), None)

    def log_epoch(self, row: dict[str, float]) -> None:
        if self.columns is None:
            self.columns = list(row)
            self.write_line(self.columns)
        extra = [key for key in row if key not in self.columns]
        if extra:
            log.warning("metrics.csv has fixed columns; not recorded there: %s", extra)
        self.write_line([format_value(row.get(key, "")) for key in self.columns])

    def write_line(self, values: list[Any]) -> None:
        # One write of a whole line, so a crash never leaves half a row.
        buffer = io.StringIO()
        csv.writer(buffer).writerow(values)
        with self.path.open("a", newline="") as handle:
            handle.write(buffer.getvalue())
            handle.flush()

    def finish(self, status: str) -> None:
        """Draw curves.png; a picture that fails to draw is a warning, never a failed run."""
        if not self.path.is_file():
            return
        from finetune.records.curves import plot_runs

        try:
            plot_runs([self.path.parent], self.path.parent / CURVES_PNG, self.monitor)
        except Exception as error:  # matplotlib or a malformed file: the run itself is fine
            log.warning("could not draw %s: %s", CURVES_PNG, error)


def format_value(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    return value
