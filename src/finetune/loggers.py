"""Record keepers behind one small interface: CSV (always), TensorBoard, and W&B (soon).

Each backend is imported only when enabled, and only rank 0 writes.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"


class Logger:
    """What the loop calls; every method is optional for a backend."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_epoch(self, row: dict[str, float]) -> None: ...

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None: ...

    def finish(self, status: str) -> None: ...


class CSVLogger(Logger):
    """metrics.csv: one row per epoch, columns in a stable order, flushed every row.

    A resumed run appends to the file and keeps its header.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
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
        from io import StringIO

        buffer = StringIO()
        csv.writer(buffer).writerow(values)
        with self.path.open("a", newline="") as handle:
            handle.write(buffer.getvalue())
            handle.flush()


def format_value(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    return value


class TensorBoardLogger(Logger):
    """Event files in <run>/tensorboard; a resumed run keeps writing to the same directory."""

    def __init__(self, directory: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(directory))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        plain = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()
        }
        self.writer.add_hparams(plain, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def finish(self, status: str) -> None:
        self.writer.close()


class Loggers(Logger):
    """Fan-out to every enabled backend."""

    def __init__(self, backends: list[Logger]) -> None:
        self.backends = backends

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for backend in self.backends:
            backend.log_metrics(metrics, step)

    def log_epoch(self, row: dict[str, float]) -> None:
        for backend in self.backends:
            backend.log_epoch(row)

    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        for backend in self.backends:
            backend.log_hparams(hparams, metrics)

    def finish(self, status: str) -> None:
        for backend in self.backends:
            backend.finish(status)


def build_loggers(cfg: DictConfig, run_dir: Path, is_main: bool) -> Loggers:
    """The backends named in the `logger` group; none on ranks other than 0."""
    if not is_main:
        return Loggers([])
    # metrics.csv is part of the run-directory contract, so it is written whatever the choice.
    backends: list[Logger] = [CSVLogger(run_dir / METRICS_CSV)]
    if "tensorboard" in cfg:
        backends.append(TensorBoardLogger(run_dir / cfg.tensorboard.dirname))
    return Loggers(backends)
