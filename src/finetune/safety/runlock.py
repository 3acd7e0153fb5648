"""One process per run directory: a lock file holding the owner's PID, removed at exit.

Two runs given the same `hydra.run.dir` would interleave their checkpoints, metrics and
summary. The first takes `<run>/run.lock`; a second refuses to start and names the first's
PID and command. The lock is an flock on that file, which the kernel drops when its process
dies however it dies (kill -9 included), so a lock file left by a dead PID is stale by
construction: the next run takes it over and says whose it was. `resume=` of a run whose
process has ended therefore just works.

Kept free of torch, so train.py can take the lock before Hydra writes anything (.hydra/,
train.log) into a directory that another run is using.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from finetune.safety.errors import RunDirInUse

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"
# Hydra flags that print and exit: they create no run directory, so they take no lock.
NO_RUN_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--version"}
NO_RUN_FLAGS |= {"--shell-completion", "-sc", "-m", "--multirun"}

# Run directory -> file descriptor holding its lock, in this process.
held: dict[Path, int] = {}


@contextlib.contextmanager
def lock_run_dir(run_dir: Path | str) -> Iterator[None]:
    """Hold `run_dir`'s lock for the block; refuse (RunDirInUse) when a live process has it.

    A no-op on torchrun ranks other than 0 (they share rank 0's run) and where this process
    holds the lock already (taken before Hydra started).
    """
    directory = Path(run_dir).resolve()
    if directory in held or os.environ.get("RANK", "0") != "0":
        yield
        return
    held[directory] = acquire(directory)
    try:
        yield
    finally:
        release(directory, held.pop(directory))


def run_dir_in_argv(argv: list[str]) -> Path | None:
    """The `hydra.run.dir=X` of a command line, when it names one plainly (no ${...})."""
    if NO_RUN_FLAGS.intersection(argv):
        return None
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith("hydra.run.dir=")]
    if not values or "${" in values[-1]:
        return None
    return Path(values[-1])


def hold_run_dir_lock(argv: list[str]) -> None:
    """Lock the command line's hydra.run.dir, if it gives one, until this process exits."""
    run_dir = run_dir_in_argv(argv)
    if run_dir is None or os.environ.get("RANK", "0") != "0":
        return
    directory = run_dir.resolve()
    if directory not in held:
        held[directory] = acquire(directory)
        atexit.register(lambda: release(directory, held.pop(directory)))


def acquire(directory: Path) -> int:
    """Lock `directory`/run.lock and write this process's facts into it; return its fd."""
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            owner = describe(read_owner(fd))
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                log.warning(
                    "cannot lock %s (%s): a second run there would not be refused", path, error
                )
                return -1
            raise RunDirInUse(
                f"run directory {directory} is in use by {owner}; wait for that run to end "
                "or stop it, or give this run another hydra.run.dir"
            ) from None
        # The owner removes the file as it releases: a lock on a removed file is no lock.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stale = read_owner(fd)
    if stale:
        log.warning("taking over the stale lock of %s, which is no longer running", describe(stale))
    facts = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(facts) + "\n").encode(), 0)
    return fd


def release(directory: Path, fd: int) -> None:
    """Remove the lock file, then drop the lock (in that order: see acquire)."""
    if fd < 0:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(directory / LOCK_NAME)
    os.close(fd)


def read_owner(fd: int) -> dict[str, object]:
    """The facts a lock file holds ({} when empty or unreadable)."""
    try:
        text = os.pread(fd, 4096, 0).decode()
        owner = json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def describe(owner: dict[str, object]) -> str:
    if not owner:
        return "another process"
    return (
        f"PID {owner.get('pid')} on {owner.get('host')} (started {owner.get('started')}: "
        f"{owner.get('command')})"
    )


def close_in_child() -> None:
    """A forked child (a data loader worker) must not keep its parent's locks alive.

    Closing the child's copy of the descriptor leaves the parent's lock in place; without it,
    a worker outliving a killed parent for a few seconds would hold the run directory.
    """
    for directory, fd in held.items():
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        held[directory] = -1  # nothing to release in the child


os.register_at_fork(after_in_child=close_in_child)
