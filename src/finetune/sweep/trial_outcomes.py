"""Telling the study how each trial's job ended, so that no trial stays RUNNING.

Every storage write is retried on a passing fault (finetune.sweep.storage): a locked SQLite
study must not lose a finished trial's value.
"""

from __future__ import annotations

import logging
import math

import optuna
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import Trial, TrialState

from finetune.sweep.storage import with_retries

log = logging.getLogger(__name__)


def tell(study: optuna.Study, trial: Trial, ret: JobReturn) -> tuple[TrialState, str]:
    """Tell the study how a trial's job ended: its state and error line ("" unless failed)."""
    run_dir = str(ret.hydra_cfg.hydra.runtime.output_dir)
    with_retries(lambda: trial.set_user_attr("run_dir", run_dir), "recording a trial")
    if ret.status == JobStatus.COMPLETED:
        value = ret.return_value
        if isinstance(value, (int, float)) and math.isfinite(value):
            with_retries(lambda: study.tell(trial, float(value)), "telling a trial")
            return TrialState.COMPLETE, ""
        error = f"trial {trial.number} returned {value!r}, not a finite number"
    elif isinstance(ret._return_value, optuna.TrialPruned):
        with_retries(lambda: study.tell(trial, state=TrialState.PRUNED), "telling a trial")
        log.info("Trial %d pruned: %s", trial.number, ret._return_value)
        return TrialState.PRUNED, ""
    else:
        lines = str(ret._return_value).strip().splitlines() or [type(ret._return_value).__name__]
        error = f"trial {trial.number}: {lines[-1].strip()}"
    log.warning("Failed (the search goes on): %s", error)
    return fail(study, trial, error)


def fail(study: optuna.Study, trial: Trial, error: str) -> tuple[TrialState, str]:
    """Tell the study the trial failed, keeping the reason as its `error` attribute."""
    with_retries(lambda: trial.set_user_attr("error", error), "recording a trial")
    with_retries(lambda: study.tell(trial, state=TrialState.FAIL), "telling a trial")
    return TrialState.FAIL, error


def error_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__
