"""Which sample each data loader worker is on, so that a failure can name it.

A worker killed by a signal (the kernel's out-of-memory killer, a stray `kill`) takes its
traceback with it: PyTorch reports only its PID. So each worker notes, in memory it shares
with the main process, its PID and the sample it is loading; `last_sample_of(pid)` then says
"train worker 1 (pid 4242), loading sample 17 (images/a/3.png),". An exception while loading
a sample (a failing transform) is named the same way, in the worker, before PyTorch wraps it.
"""

from __future__ import annotations

import os
import signal
import time
import weakref
from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info

from finetune.safety.errors import DataFault, FinetuneError, one_line

# Columns of a worker's row in the shared table.
PID, INDEX, LOADING = 0, 1, 2
# Every TrackedDataset of this process, for the main process's error report.
LIVE: weakref.WeakSet[TrackedDataset] = weakref.WeakSet()


class TrackedDataset(Dataset):
    """`dataset`, with each worker's PID and current sample noted in shared memory."""

    def __init__(self, dataset: Dataset, split: str, num_workers: int) -> None:
        self.dataset, self.split = dataset, split
        # One row per worker: PID, sample index, 1 while loading it. Created before the
        # workers start, so they share it (fork) or receive it as shared memory (spawn).
        self.table = torch.full((max(num_workers, 1), 3), -1, dtype=torch.int64).share_memory_()
        LIVE.add(self)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def note(self, index: int) -> Any:
        """This worker's row, marked as loading sample `index` (None in the main process)."""
        worker = get_worker_info()
        row = None if worker is None else self.table[worker.id].numpy()
        if row is not None:
            row[PID], row[INDEX], row[LOADING] = os.getpid(), index, 1
        return row

    def __getitems__(self, indices: list[int]) -> list[Any]:
        """A batch: in one tensor operation where the data set can (cached views), noted by its
        first sample; else sample by sample, each noted, and a failure names its sample."""
        in_one_piece = getattr(self.dataset, "in_one_piece", None)
        if not indices or in_one_piece is None or not in_one_piece(indices):
            return [self[index] for index in indices]
        row = self.note(indices[0])
        items = self.dataset.load_batch(indices)
        if row is not None:
            row[LOADING] = 0
        return items

    def __getitem__(self, index: int) -> Any:
        row = self.note(index)
        try:
            item = self.dataset[index]
        except FinetuneError:
            raise  # it names its sample already (an unreadable image)
        except Exception as error:
            from finetune.safety.faults import is_out_of_memory

            if is_out_of_memory(error):
                raise
            raise DataFault(
                f"loading {self.describe(index)} failed: {type(error).__name__}: "
                f"{one_line(error)}; fix or remove the file, or the transform"
            ) from None
        if row is not None:
            row[LOADING] = 0
        return item

    def describe(self, index: int) -> str:
        """The sample, and its file when the dataset has one: "train sample 17 (a/3.png)"."""
        samples = getattr(self.dataset, "samples", None)
        path = f" ({samples[index][0]})" if samples is not None else ""
        return f"{self.split} sample {index}{path}"

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found here: the wrapped dataset's (transform, ...).
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def last_sample_of(pid: int) -> str | None:
    """What the worker with `pid` was doing, as the start of a sentence; None if unknown.

    "train data loader worker 1 (pid 4242), loading train sample 17 (a/3.png),"
    """
    for tracked in list(LIVE):
        for worker, (row_pid, index, loading) in enumerate(tracked.table.tolist()):
            if row_pid != pid:
                continue
            doing = "loading" if loading == 1 else "last loaded"
            return (
                f"{tracked.split} data loader worker {worker} (pid {pid}), {doing} "
                f"{tracked.describe(index)},"
            )
    return None


def worker_deaths(wait_s: float = 1.0) -> str:
    """This process's dead loader workers, one line each in PyTorch's words ("DataLoader worker
    (pid 4242) is killed by signal: Killed."); "" if none.

    PyTorch misses a worker killed while it hands over a batch: the main process meets a reset
    connection before the worker is a zombie, and raises that instead. Looking again, up to
    `wait_s`, finds it. The workers' pids are those they noted in the shared tables.
    """
    pids = {pid for tracked in list(LIVE) for pid in tracked.table[:, PID].tolist() if pid > 0}
    if not pids:
        return ""  # no worker has loaded anything: the error came from elsewhere (the hub...)
    deadline = time.monotonic() + wait_s
    while True:
        lines = [line for line in map(death_of, sorted(pids)) if line]
        if lines or time.monotonic() > deadline:
            return "\n".join(lines)
        time.sleep(0.05)


def death_of(pid: int) -> str | None:
    """How a child process ended, without reaping it (PyTorch still waits for it); None while
    it lives or when it is not a child of this process."""
    try:
        ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if ended is None:
        return None
    worker = f"DataLoader worker (pid {pid})"
    if ended.si_code == os.CLD_EXITED:
        return f"{worker} exited unexpectedly with exit code {ended.si_status}"
    return f"{worker} is killed by signal: {signal.strsignal(ended.si_status)}."
