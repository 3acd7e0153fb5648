"""Watching a train.py subprocess from a test: a file it writes, a step it saves, the processes
it starts (loader workers, W&B's service), read from /proc."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 240) -> None:
    """Wait until `path` exists; fail at once, with the output, if the process ended."""
    deadline = time.time() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def wait_for_step(
    run_dir: Path, process: subprocess.Popen, step: int, timeout_s: float = 240
) -> int:
    """Wait until the run's last.pt was saved at `step` or later (a state, not a moment).

    Returns the step saved. A run started with `checkpoint.every_n_steps` saves mid-epoch, so
    this reaches into an epoch; last.pt is renamed into place whole, so reading it is safe.
    """
    import torch

    path = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + timeout_s
    while True:
        saved = -1
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)["global_step"]
        if saved >= step:
            return saved
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.time() < deadline, f"{path} never reached step {step} (last: {saved})"
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """The processes `pid` started (its data loader workers, W&B's service), all threads."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return sorted(found)


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
