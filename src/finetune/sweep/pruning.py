"""Pruning in an Optuna search: a job reports each epoch's monitored value to its trial.

When `hydra.sweeper.pruner` is set, the sweeper (hydra_plugins/finetune_optuna_sweeper) puts
the trial, study and storage in each job's environment through `hydra.job.env_set`; the pruner
comes from the job's own `hydra.sweeper.pruner`. Outside such a job `report` does nothing.
"""

from __future__ import annotations

import math
import os

TRIAL_ENV = "FINETUNE_OPTUNA_TRIAL_ID"
STUDY_ENV = "FINETUNE_OPTUNA_STUDY"
STORAGE_ENV = "FINETUNE_OPTUNA_STORAGE"


def report(epoch: int, value: float) -> None:
    """Give the trial this epoch's value; raise optuna.TrialPruned when the pruner says stop.

    The exception ends the run like any error (summary.json, then the sweep summary, say
    "pruned") and the sweeper tells the study the trial was pruned.
    """
    trial_id = os.environ.get(TRIAL_ENV)
    if trial_id is None or not math.isfinite(value):
        return
    import optuna
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    study = optuna.load_study(
        study_name=os.environ[STUDY_ENV],
        storage=os.environ[STORAGE_ENV],
        pruner=instantiate(HydraConfig.get().sweeper.pruner),
    )
    trial = optuna.trial.Trial(study, int(trial_id))
    trial.report(value, step=epoch)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at epoch {epoch} ({value:.4f})")
