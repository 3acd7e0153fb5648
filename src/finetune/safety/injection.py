"""A signal sent on purpose after a chosen step, so that a test stops a run at a known state.

`FINETUNE_SIGNAL_AT_STEP=SIGINT:6` makes the training process send itself SIGINT right after
optimizer step 6, as a Ctrl-C landing then would: the test then waits for the process to end,
not for a moment to strike. Unset (outside tests) it does nothing.
"""

from __future__ import annotations

import os
import signal

from finetune.safety.errors import FinetuneError

ENV = "FINETUNE_SIGNAL_AT_STEP"


class PlannedSignal:
    """The signal and the step of FINETUNE_SIGNAL_AT_STEP, read once when a loop starts."""

    def __init__(self) -> None:
        value = os.environ.get(ENV, "")
        self.step, self.signum = None, None
        if not value:
            return
        name, _, step = value.partition(":")
        if name not in signal.Signals.__members__ or not step.isdigit():
            raise FinetuneError(f"{ENV}={value} must be SIGNAL:STEP, e.g. SIGINT:6")
        self.step, self.signum = int(step), signal.Signals[name]

    def after_step(self, step: int) -> None:
        if step == self.step:
            os.kill(os.getpid(), self.signum)
