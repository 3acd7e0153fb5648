"""User-facing errors: one line that names the bad value and the fix, no traceback."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

log = logging.getLogger(__name__)

# Exit statuses, one per way a run ends, so that a script or a scheduler can tell them apart
# (README, "When things go wrong"). 1 is Python's own: an unexpected exception, a bug.
EXIT_BAD_INPUT = 2  # config, data or files (argparse and Hydra use 2 as well)
EXIT_DIVERGED = 3  # NaN or inf loss or weights
EXIT_OUT_OF_MEMORY = 4  # CUDA or CPU allocation failed
EXIT_WRITE_FAILED = 5  # disk full, file too large, unwritable directory
EXIT_DATA_FAILED = 6  # a data loader worker died, an image could not be read
EXIT_RUN_DIR_IN_USE = 7  # another process is running in the same run directory
# Stopped by a signal: 128 + its number, as a shell reports it (130 Ctrl-C, 143 SIGTERM).

# The user asked for tracebacks (Hydra's switch), read before hydra_errors_as_bad_input sets it.
TRACEBACKS_WANTED = os.environ.get("HYDRA_FULL_ERROR") == "1"


class FinetuneError(Exception):
    """A problem with the user's input or environment that a traceback would not explain.

    `status` is what summary.json records and `exit_code` what the process exits with; each
    kind of fault below is a subclass with its own.
    """

    status = "failed"
    exit_code = EXIT_BAD_INPUT


class Diverged(FinetuneError):
    """The loss or the weights became NaN or inf: no checkpoint is written from them."""

    status = "diverged"
    exit_code = EXIT_DIVERGED


class OutOfMemory(FinetuneError):
    """An allocation failed (CUDA or CPU) during the run."""

    status = "out_of_memory"
    exit_code = EXIT_OUT_OF_MEMORY


class WriteFailed(FinetuneError):
    """A file of the run could not be written; the previous version of it is whole."""

    status = "write_failed"
    exit_code = EXIT_WRITE_FAILED


class DataFault(FinetuneError):
    """Loading a sample failed: an unreadable file, a failing transform, a dead worker."""

    status = "data_error"
    exit_code = EXIT_DATA_FAILED


class RunDirInUse(FinetuneError):
    """Another live process holds the run directory's lock (the directory is not this run's)."""

    status = "refused"
    exit_code = EXIT_RUN_DIR_IN_USE


def one_line(error: BaseException) -> str:
    """The last non-empty line of an error's text.

    Errors raised in DataLoader workers come back wrapped with the worker's whole traceback;
    the line that matters is the last one.
    """
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    # A worker's re-raised text ends in "module.ErrorType: message": keep the message.
    return re.sub(r"^[\w.]*(Error|Exception): ", "", lines[-1].strip())


@contextlib.contextmanager
def exit_on_user_error(reraise: bool = False) -> Iterator[None]:
    """Turn a FinetuneError into one logged line and its exit status (2 for bad input).

    With HYDRA_FULL_ERROR=1, or `reraise` (a multirun job, whose launcher records the failure
    and goes on with the other jobs), the exception propagates unchanged.
    """
    try:
        yield
    except FinetuneError as error:
        if reraise or TRACEBACKS_WANTED:
            raise
        log.error("Error: %s", one_line(error))
        raise SystemExit(error.exit_code) from None


@contextlib.contextmanager
def hydra_errors_as_bad_input() -> Iterator[None]:
    """Around `main()`: Hydra's own bad-input errors as one line and exit 2, like ours.

    Hydra reports an unknown group option or a malformed override over several lines and exits
    1, the status of a bug. It hands its errors on only under HYDRA_FULL_ERROR=1, so that is set
    for the call; a bug still ends in its traceback and exit 1, and a user who set it gets
    Hydra's errors as tracebacks too. (A single run's own errors are handled inside `main()`.)
    """
    from hydra.errors import HydraException

    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except HydraException as error:
        if TRACEBACKS_WANTED:
            raise
        log.error("Error: %s", hydra_line(error))
        raise SystemExit(EXIT_BAD_INPUT) from None
    except FinetuneError as error:  # a sweep's failed job, which Hydra raises once all ran
        if TRACEBACKS_WANTED:
            raise
        log.error("Error: %s", one_line(error))
        raise SystemExit(error.exit_code) from None
    finally:
        if not TRACEBACKS_WANTED:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def hydra_line(error: BaseException) -> str:
    """Hydra's text on one line: "In 'train': Could not find 'model/nope' (Available options
    in 'model': a, b)", without the config search path."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if "Config search path:" in lines:
        lines = lines[: lines.index("Config search path:")]
    head, *rest = lines
    override = getattr(error, "override", None)  # a malformed override: name it
    head = f"{override}: {head}" if override else head
    if not rest:
        return head
    label, *items = rest
    return f"{head} ({label} {', '.join(items)})"
