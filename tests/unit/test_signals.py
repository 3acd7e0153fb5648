"""StopRequest: a signal asks the loop to stop; a launcher's own handler gets it afterwards."""

from __future__ import annotations

import os
import signal

import pytest

from finetune.safety.signals import StopRequest


@pytest.fixture
def launcher_handler():
    """A Python handler for SIGUSR2 as submitit installs one; restored after the test."""
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGUSR2, previous)


def test_a_signal_only_asks_to_stop_and_the_launcher_hears_it_after_the_save(
    launcher_handler,
) -> None:
    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.requested
        assert launcher_handler == []  # not yet: last.pt is not saved
        stopped = stop.stopped()
        assert (stopped.status, stopped.exit_code) == ("preempted", 128 + signal.SIGUSR2)
        stop.hand_over(stopped.signum)
        assert launcher_handler == [signal.SIGUSR2]
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGUSR2) is not stop.handle  # the launcher's is back


@pytest.mark.parametrize("previous", [signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler])
def test_default_handlers_are_not_called_after_a_stop(previous) -> None:
    """SIG_DFL would kill the process, and Python's KeyboardInterrupt would undo the clean stop."""
    before = signal.signal(signal.SIGUSR2, previous)
    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        stop.hand_over(signal.SIGUSR2)  # returns: nothing to hand over to
        assert stop.requested
    finally:
        stop.close()
        signal.signal(signal.SIGUSR2, before)


def test_a_second_ctrl_c_stops_at_once() -> None:
    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.stopped().status == "interrupted"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.close()
