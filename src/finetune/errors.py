"""User-facing errors: one line that names the bad value and the fix, no traceback."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

log = logging.getLogger(__name__)

# Exit status of a run stopped by bad input (argparse and Hydra use 2 as well).
EXIT_BAD_INPUT = 2


class FinetuneError(Exception):
    """A problem with the user's input or environment that a traceback would not explain."""


def one_line(error: BaseException) -> str:
    """The last non-empty line of an error's text.

    Errors raised in DataLoader workers come back wrapped with the worker's whole traceback;
    the line that matters is the last one.
    """
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


@contextlib.contextmanager
def exit_on_user_error(reraise: bool = False) -> Iterator[None]:
    """Turn a FinetuneError into one logged line and exit status 2.

    With HYDRA_FULL_ERROR=1, or `reraise` (a multirun job, whose launcher records the failure
    and goes on with the other jobs), the exception propagates unchanged.
    """
    try:
        yield
    except FinetuneError as error:
        if reraise or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("Error: %s", one_line(error))
        raise SystemExit(EXIT_BAD_INPUT) from None
