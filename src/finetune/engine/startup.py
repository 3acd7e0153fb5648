"""How long a run takes to start: seconds from process start to its first optimizer step.

Start-up is paid again by every short job, every sweep trial and every requeued job, and it
hides in places nobody times (imports, the hub, building loaders, torch.compile's first call).
So each run measures it, in phases, logs one line and keeps it in summary.json.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

log = logging.getLogger(__name__)

_IMPORTED_AT = time.time()  # the fallback clock where /proc is not there


def process_age_s() -> float:
    """Seconds since this process started, the interpreter's own start-up included.

    Linux gives the start time in /proc (clock ticks since boot); elsewhere the clock starts
    when this module was imported, which misses only the interpreter and the first imports.
    """
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            # Fields after the command name (which may hold spaces); starttime is field 22.
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            uptime_s = float(uptime.read().split()[0])
        return uptime_s - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time() - _IMPORTED_AT


class StartupClock:
    """Marks phases of start-up; the optimizer's first step closes it.

    `mark(name)` ends a phase; the first `optimizer.step()` (a post-hook, so the loop is left
    alone) ends the last one, logs it and stores it in `summary["startup_s"]`.
    """

    def __init__(self, first_phase: str) -> None:
        self.marks: dict[str, float] = {}
        self.mark(first_phase)

    def mark(self, name: str) -> None:
        self.marks[name] = process_age_s()

    def phases(self) -> dict[str, float]:
        """Seconds spent in each phase, in order, and the total."""
        durations, before = {}, 0.0
        for name, at in self.marks.items():
            durations[name] = round(at - before, 2)
            before = at
        return {**durations, "total": round(before, 2)}

    def stop_at_first_step(self, optimizer: torch.optim.Optimizer, summary: dict[str, Any]) -> None:
        def first_step(*_: Any) -> None:
            handle.remove()
            self.mark("first_step")
            summary["startup_s"] = phases = self.phases()
            log.info(
                "first optimizer step %.1fs after the process started (%s)",
                phases["total"],
                ", ".join(f"{k} {v:.1f}s" for k, v in phases.items() if k != "total"),
            )

        handle = optimizer.register_step_post_hook(first_step)


def mark(clock: StartupClock | None, phase: str) -> None:
    """End a start-up phase where a clock runs (the LR finder's probe and scripts have none)."""
    if clock is not None:
        clock.mark(phase)
