"""Stopping cleanly on a signal: finish the step, save, record, exit.

SIGTERM, SIGUSR1 and SIGUSR2 are how clusters preempt a job or warn of its time limit (SLURM
sends one before the kill; submitit asks SLURM for USR2); SIGINT is Ctrl-C. The first signal
sets a flag that the loop checks after every step; a second SIGINT stops at once.

A launcher may have its own handler for the signal: submitit's requeues the job on USR2. Ours
replaces it only until the state is saved; then `hand_over` calls it, so the job is requeued
with a last.pt from this step instead of being killed mid-step with one from the last epoch.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class RunStopped(Exception):
    """Raised by the loop once the state is saved after a stop request."""

    def __init__(self, status: str, signum: int) -> None:
        super().__init__(f"{status} by {signal.Signals(signum).name}")
        self.status, self.signum = status, signum

    @property
    def exit_code(self) -> int:
        """128 + signal number, as a shell reports a process ended by that signal."""
        return 128 + self.signum


class StopRequest:
    """Signal handlers that ask the loop to stop; restored on close()."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be installed from the main thread (joblib jobs)
        for signum in (*PREEMPT_SIGNALS, signal.SIGINT):
            self.previous[signum] = signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signum = signum
        log.warning(
            "%s received: finishing the step, saving last.pt, then stopping "
            "(resume=RUN_DIR continues)",
            signal.Signals(signum).name,
        )

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def stopped(self) -> RunStopped:
        assert self.signum is not None
        status = "interrupted" if self.signum == signal.SIGINT else "preempted"
        return RunStopped(status, self.signum)

    def stopped_or_peer(self) -> RunStopped:
        """This process's stop, or (under torchrun) the stop another rank received."""
        return (
            self.stopped() if self.signum is not None else RunStopped("preempted", signal.SIGTERM)
        )

    def hand_over(self, signum: int) -> None:
        """Call the handler that was there before ours (a launcher's), now that last.pt is saved.

        submitit's requeues the job and exits; Python's own (Ctrl-C's KeyboardInterrupt) and the
        defaults (terminate, ignore) are not called: stopping is already done.
        """
        previous = self.previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            log.info("Handing %s to the launcher's handler", signal.Signals(signum).name)
            previous(signum, None)

    def close(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
