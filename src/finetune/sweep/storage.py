"""Retrying an Optuna storage call that failed for a passing reason.

A SQLite study shared by several jobs is locked while one of them writes; a PostgreSQL server
drops a connection now and then. Either would end a healthy trial (or the sweep) on the spot.
The call is tried again a few times with a growing pause; a lasting fault still surfaces, as
the error the storage raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# Five tries, pausing 0.2, 0.4, 0.8, 1.6 s between them: about 3 s, past a typical write's lock.
ATTEMPTS = 5
FIRST_PAUSE_S = 0.2


def is_transient(error: BaseException) -> bool:
    """A locked database or a lost connection (OperationalError), raw or wrapped by Optuna."""
    from sqlalchemy.exc import OperationalError

    return any(isinstance(e, OperationalError) for e in (error, error.__cause__))


def backoff(attempt: int) -> None:
    """The pause after failed try number `attempt` (0-based): doubling each time."""
    time.sleep(FIRST_PAUSE_S * 2**attempt)


def with_retries(action: Callable[[], T], what: str) -> T:
    """`action()`, tried again after a transient storage error, at most ATTEMPTS times in all."""
    for attempt in range(ATTEMPTS - 1):
        try:
            return action()
        except Exception as error:
            if not is_transient(error):
                raise
            reason = str(error).strip().splitlines()[0]
            log.warning("Optuna storage: %s failed (%s); trying again", what, reason)
            backoff(attempt)
    return action()
