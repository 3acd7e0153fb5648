"""Faults during a run, recognised and put in one line that names the cause and the fix.

A run that fails ends with a summary.json status and an exit code of its own (errors.py has
the table). The loop and the data raise those errors where they know the fault (a NaN loss, an
unreadable image, a full disk); what PyTorch raises in its own words (an allocation that
failed, a data loader worker that died, autograd's anomaly report) is translated here by
`explain`, once, where `run()` records how the run ended.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import re
import signal
import threading
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from finetune.safety.errors import (
    DataFault,
    Diverged,
    FinetuneError,
    OutOfMemory,
    WriteFailed,
    one_line,
)

# How PyTorch words a failed allocation: CUDA, the CPU allocator, MPS.
OUT_OF_MEMORY = re.compile(
    r"out of memory|DefaultCPUAllocator: (?:not enough memory|can't allocate memory)"
    r"|Cannot allocate memory"
)
# oneDNN (the CPU convolutions) when it cannot build a kernel: its own allocation (JIT code,
# scratchpad) failed, or it does not support the layer; `address_space_left` tells which.
ONEDNN_CREATE_FAILED = re.compile(r"could not create a primitive")
# The probe that tells them apart: an allocation a working process always gets.
PROBE_BYTES = 16 * 2**20
# How the main process learns of a dead worker (dataloader.py and the C++ SIGCHLD handler).
DEAD_WORKER = re.compile(
    r"DataLoader worker \(pid\(?s?\)? ?(?P<pids>[\d, ]+)\) "
    r"(?:is killed by signal: (?P<signal>[^.]+)"
    r"|exited unexpectedly(?: with exit code (?P<code>-?\d+))?)"
)
# What the main process meets when a worker dies while handing over a batch (its socket is
# reset before PyTorch sees the worker gone).
LOST_BATCH = (ConnectionError, EOFError)
# The header of an exception re-raised from a worker: "Caught X in DataLoader worker process 1."
IN_WORKER = re.compile(r"in DataLoader worker process (\d+)")
# errno values that mean "the disk will not take it", whoever was writing.
FULL_DISK = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def explain(
    error: BaseException,
    cfg: DictConfig,
    worker_sample: Callable[[int], str | None] = lambda pid: None,
    worker_deaths: Callable[[], str] = str,
) -> BaseException:
    """The fault behind `error` as a FinetuneError with its status and exit code; else `error`.

    `worker_sample(pid)` names what a data loader worker was loading, and `worker_deaths()`
    words the dead workers PyTorch missed (data/tracking.py's `last_sample_of` and
    `worker_deaths`, passed in by the engine: safety knows nothing of data).
    """
    if isinstance(error, FinetuneError):
        return from_worker(error)
    if not isinstance(error, Exception):
        return error  # KeyboardInterrupt, SystemExit: not a fault of the run
    text = "\n".join(str(e) for e in chain(error))
    if isinstance(error, MemoryError) or any(is_out_of_memory(e) for e in chain(error)):
        return OutOfMemory(out_of_memory_line(text, cfg))
    if any(isinstance(e, LOST_BATCH) for e in chain(error)) and not DEAD_WORKER.search(text):
        text += "\n" + worker_deaths()  # a worker died while handing over a batch
    # PyTorch says "exited unexpectedly" wrapped around "is killed by signal: X": the latter.
    deaths = sorted(DEAD_WORKER.finditer(text), key=lambda m: m.group("signal") is None)
    if deaths:
        return DataFault(dead_worker_line(deaths[0], cfg, worker_sample))
    if "returned nan values" in text or "returned inf values" in text:
        return Diverged(
            f"{one_line(error)} (trainer.detect_anomaly=true: the forward call that made it is "
            f"in the traceback above); {DIVERGED_FIX}"
        )
    if isinstance(error, OSError) and error.errno in FULL_DISK:
        name = error.filename or "a file of the run"
        return WriteFailed(f"could not write {name}: {error.strerror}; free disk space")
    return error


def silence_dead_workers() -> None:
    """Keep PyTorch's SIGCHLD handler from raising again once the run has failed.

    A dead loader worker stays registered while its persistent iterator lives, and torch's
    handler raises at every later SIGCHLD: once, while summary.json was being written, it
    replaced the one-line error with a traceback. A later sweep job's loader still finds a dead
    worker, by its own check of its workers (every 5 s).

    A SIGCHLD still pending runs torch's handler inside the very call that replaces it (Python
    runs handlers between bytecodes, and `signal.signal` is Python code before it is C), which
    raises the dead-worker error there, before the swap: that error is the run's own failure
    told again, so the swap is tried until it is done.
    """
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        return
    while True:
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            return
        except RuntimeError as pending:
            if not DEAD_WORKER.search(str(pending)):
                raise


def chain(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from (PyTorch wraps a worker's death twice)."""
    found: list[BaseException] = []
    while error is not None and error not in found:
        found.append(error)
        error = error.__cause__ or error.__context__
    return found


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    oom_type = getattr(torch.cuda, "OutOfMemoryError", ())
    if isinstance(error, oom_type):
        return True
    if not isinstance(error, RuntimeError):
        return False
    text = str(error)
    if OUT_OF_MEMORY.search(text):
        return True
    return bool(ONEDNN_CREATE_FAILED.search(text)) and not address_space_left()


def address_space_left(size: int = PROBE_BYTES) -> bool:
    """Whether this process can still map `size` bytes (anonymous, never touched).

    When memory runs out on the CPU, the allocation that fails is whichever comes next: on
    AVX-512 processors that is often oneDNN's, which says only "could not create a primitive"
    (seen in CI under a capped address space). The same words come from a layer oneDNN does
    not support, where memory is plentiful: so the failure counts as out of memory only when a
    16 MiB mapping fails now too.
    """
    try:
        mmap.mmap(-1, size).close()
    except OSError:
        return False
    return True


def out_of_memory_line(text: str, cfg: DictConfig) -> str:
    """Which allocation failed, with what batch size, and the three ways to need less."""
    device = "GPU" if "CUDA" in text else "MPS" if "MPS" in text else "CPU"
    asked = re.search(r"[Tt]ried to allocate (?:([\d.]+ ?[KMGT]?i?B)|(\d+) bytes)", text)
    size = ""
    if asked:
        amount = asked.group(1) or f"{int(asked.group(2)) / 2**20:.1f} MiB"
        size = f" (an allocation of {amount})"
    return (
        f"out of {device} memory{size} with data.batch_size={cfg.data.batch_size} at "
        f"data.image_size={cfg.data.image_size}; lower data.batch_size and raise "
        "trainer.accumulate_grad_batches to keep the effective batch, or use "
        "trainer.precision=bf16"
    )


def dead_worker_line(
    match: re.Match[str], cfg: DictConfig, worker_sample: Callable[[int], str | None]
) -> str:
    """Name the worker, the sample it was on, and the likely cause."""
    pid = int(match.group("pids").split(",")[0])
    how = (
        f"was killed by {signal_name(match.group('signal').strip())}"
        if match.group("signal")
        else f"exited unexpectedly (exit code {match.group('code')})"
        if match.group("code")
        else "exited unexpectedly"
    )
    where = worker_sample(pid) or f"data loader worker (pid {pid})"
    fix = (
        "the shared memory (/dev/shm) is too small: raise it (docker --shm-size) or lower "
        "data.num_workers"
        if "Bus error" in how
        else "if the kernel's out-of-memory killer did it (see dmesg), lower data.num_workers "
        "or data.batch_size; else data.num_workers=0 shows the error where it happens"
    )
    return f"{where} {how}; {fix} (data.num_workers={cfg.data.num_workers})"


def signal_name(description: str) -> str:
    """What PyTorch reports ("Killed", strsignal's words) as a name: "SIGKILL (Killed)"."""
    names = {signal.strsignal(s): s.name for s in signal.Signals}
    return f"{names[description]} ({description})" if description in names else description


def from_worker(error: FinetuneError) -> FinetuneError:
    """A FinetuneError raised in a worker comes back as the worker's whole traceback: one line.

    "Caught DataFault in DataLoader worker process 1 ... errors.DataFault: unreadable
    image X" becomes "data loader worker 1: unreadable image X".
    """
    worker = IN_WORKER.search(str(error))
    if worker is None:
        return error
    line = re.sub(r"^[\w.]+: ", "", one_line(error))
    return type(error)(f"data loader worker {worker.group(1)}: {line}")


def status_of(error: BaseException) -> str:
    """summary.json's status for a run that ended with `error`."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return error.status if isinstance(error, FinetuneError) else "failed"


DIVERGED_FIX = (
    "lower optimizer.lr, set trainer.grad_clip (e.g. 1.0), train in fp32 "
    "(trainer.precision=32), or trainer.detect_anomaly=true to find the operation that made it"
)


class NonFiniteWatch:
    """Finds the first optimizer step whose loss was NaN or inf, without a host sync per step.

    `see` is two tiny device ops per step; `check` reads the result (one sync) and is called
    where the loop syncs anyway: logged steps, and before any checkpoint is written, so that
    no checkpoint ever holds NaN weights and last.pt and best.pt stay from before.
    """

    def __init__(self, device: torch.device) -> None:
        self.first_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.loss = torch.zeros((), dtype=torch.float32, device=device)

    def see(self, loss: torch.Tensor, step: int) -> None:
        new = ~torch.isfinite(loss.detach()) & (self.first_step < 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.loss = torch.where(new, loss.detach().float(), self.loss)

    def check(self, model: nn.Module | None = None) -> None:
        """Raise Diverged if a loss seen (or, given `model`, a weight) is NaN or inf.

        Under torchrun every rank calls this at the same steps and they agree, so all stop.
        """
        from finetune.engine.distributed import dist_info

        step, loss = int(self.first_step), float(self.loss)
        weights_ok = model is None or finite_weights(model)
        if dist_info().enabled:
            import torch.distributed as dist

            facts = torch.tensor([step, int(not weights_ok)], device=self.first_step.device)
            dist.all_reduce(facts, op=dist.ReduceOp.MAX)
            step, weights_ok = int(facts[0]), not bool(facts[1])
        if step >= 0:
            raise Diverged(f"loss is {loss} at step {step}: training diverged; {DIVERGED_FIX}")
        if not weights_ok:
            raise Diverged(f"the weights hold NaN or inf: training diverged; {DIVERGED_FIX}")


def finite_weights(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer is finite (one host sync)."""
    tensors = [
        t.detach()
        for t in itertools.chain(model.parameters(), model.buffers())
        if t.is_floating_point()
    ]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def fault_counts(checkpointer: Any, skipped: dict[str, Any]) -> dict[str, Any]:
    """What went wrong without stopping the run, for summary.json: saves that failed under
    checkpoint.on_error=warn, and the `skipped` images (data.on_bad_image=skip)."""
    counts: dict[str, Any] = {}
    if checkpointer.on_error == "warn":
        counts["failed_checkpoint_saves"] = checkpointer.failed_saves
    counts.update(skipped)
    return counts
