"""The run directory lock: a second process refuses, a dead owner's lock is taken over,
and a forked child (a data loader worker) never keeps its parent's lock alive."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from finetune.safety.errors import RunDirInUse
from finetune.safety.runlock import LOCK_NAME, lock_run_dir, run_dir_in_argv

# A process that takes the lock, prints "held <child pid or 0>" and waits; with "fork" it
# first forks a child that prints "child" once running (its fork hooks done) and sleeps on.
HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from finetune.safety.runlock import lock_run_dir
    with lock_run_dir(sys.argv[1]):
        child = os.fork() if sys.argv[2] == "fork" else 0
        if sys.argv[2] == "fork" and child == 0:
            os.write(1, b"child\\n")
            time.sleep(60)
            os._exit(0)
        os.write(1, f"held {child}\\n".encode())
        time.sleep(60)
    """
)


def hold(run_dir: Path, fork: bool = False) -> tuple[subprocess.Popen, int]:
    """(the holder, its forked child's PID or 0)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir), "fork" if fork else "-"],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines = [process.stdout.readline().split() for _ in range(1 + fork)]
    held = next(line for line in lines if line[0] == "held")
    assert len(lines) == 1 or ["child"] in lines
    return process, int(held[1])


def test_a_second_process_is_refused_naming_the_first(tmp_path: Path) -> None:
    holder, _ = hold(tmp_path)
    try:
        with (
            pytest.raises(RunDirInUse, match=f"in use by PID {holder.pid} "),
            lock_run_dir(tmp_path),
        ):
            pytest.fail("took a lock that another process holds")
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_released_at_exit_and_reentrant(tmp_path: Path) -> None:
    with lock_run_dir(tmp_path), lock_run_dir(tmp_path):  # this process already holds it
        facts = json.loads((tmp_path / LOCK_NAME).read_text())
        assert facts["pid"] > 0 and "command" in facts
    assert not (tmp_path / LOCK_NAME).exists()
    with lock_run_dir(tmp_path):  # and it can be taken again
        pass


@pytest.mark.parametrize("fork", [False, True], ids=["plain", "with-a-forked-child"])
def test_a_killed_owners_lock_is_stale_and_taken_over(
    fork: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """kill -9 leaves the lock file; the kernel dropped the lock, even while the owner's
    forked child lives on."""
    holder, child = hold(tmp_path, fork=fork)
    holder.kill()
    holder.wait()
    try:
        assert str(holder.pid) in (tmp_path / LOCK_NAME).read_text()
        caplog.set_level(logging.WARNING)
        with lock_run_dir(tmp_path):
            assert f"taking over the stale lock of PID {holder.pid}" in caplog.text
    finally:
        if child:
            os.kill(child, signal.SIGKILL)


def test_run_dir_in_argv() -> None:
    assert run_dir_in_argv(["train.py", "hydra.run.dir=/x/run"]) == Path("/x/run")
    assert run_dir_in_argv(["train.py", "seed=1"]) is None
    assert run_dir_in_argv(["train.py", "hydra.run.dir=out/${now:%H}"]) is None
    assert run_dir_in_argv(["train.py", "--cfg", "job", "hydra.run.dir=/x"]) is None
    assert run_dir_in_argv(["train.py", "-m", "hydra.run.dir=/x"]) is None
