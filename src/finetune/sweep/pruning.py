"""Pruning in an Optuna search: a job reports each epoch's monitored value to its trial.

When `hydra.sweeper.pruner` is set, the sweeper (hydra_plugins/finetune_optuna_sweeper) puts
the trial and study in each job's environment through `hydra.job.env_set`, and the storage URL
in its own environment, which jobs inherit (env_set is written to .hydra/hydra.yaml, and a URL
may hold a password); the pruner comes from the job's own `hydra.sweeper.pruner`. Outside such
a job `report` does nothing.

Under DDP only rank 0 talks to the storage and every rank gets its decision: ranks that chose
on their own could disagree (one asks the pruner after another trial reported), and the rank
that stops would leave the others waiting in their next collective forever.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from finetune.sweep.storage import with_retries

TRIAL_ENV = "FINETUNE_OPTUNA_TRIAL_ID"
STUDY_ENV = "FINETUNE_OPTUNA_STUDY"
STORAGE_ENV = "FINETUNE_OPTUNA_STORAGE"


def report(epoch: int, value: float) -> None:
    """Give the trial this epoch's value; raise optuna.TrialPruned when the pruner says stop.

    The exception ends the run like any error (summary.json, then the sweep summary, say
    "pruned") and the sweeper tells the study the trial was pruned. Every rank of a DDP job
    must call this at the same epoch (the value is the one reduced over ranks).
    """
    if os.environ.get(TRIAL_ENV) is None or not math.isfinite(value):
        return
    prune = main_rank_decision(lambda: with_retries(lambda: report_and_ask(epoch, value), "report"))
    if prune:
        import optuna

        raise optuna.TrialPruned(f"pruned at epoch {epoch} ({value:.4f})")


def report_and_ask(epoch: int, value: float) -> bool:
    """Report to the trial in the storage and return whether its pruner says stop."""
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    study = optuna.load_study(
        study_name=os.environ[STUDY_ENV],
        storage=os.environ[STORAGE_ENV],
        pruner=instantiate(HydraConfig.get().sweeper.pruner),
    )
    trial = optuna.trial.Trial(study, int(os.environ[TRIAL_ENV]))
    trial.report(value, step=epoch)
    return trial.should_prune()


def main_rank_decision(decide: Callable[[], bool]) -> bool:
    """`decide()` on rank 0 alone, its answer on every rank (just `decide()` without DDP).

    When rank 0 fails (the storage stays unreachable), the other ranks fail too rather than
    wait for an answer that never comes.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return decide()
    box: list[object] = [None]
    failure: Exception | None = None
    if dist.get_rank() == 0:
        try:
            box[0] = decide()
        except Exception as error:
            failure, box[0] = error, error_line(error)
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    if isinstance(box[0], str):
        raise RuntimeError(f"rank 0 could not report to the Optuna storage: {box[0]}")
    return bool(box[0])


def error_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
