"""Progress on long work: a bar on a terminal, plain log lines elsewhere (SLURM logs, CI)."""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


class ProgressBar:
    """A tqdm bar when stderr is a terminal; nothing per step otherwise (the epoch line stays)."""

    def __init__(self, total: int, description: str, enabled: bool, initial: int = 0) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=description, leave=False, dynamic_ncols=True
            )

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def show(self, **values: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def log_to_file_only(text: str) -> None:
    """Write `text` to train.log (Hydra's file handler) without flooding the console."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
