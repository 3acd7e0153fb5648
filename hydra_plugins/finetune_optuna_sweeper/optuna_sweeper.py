"""The sweeper Hydra finds when it scans plugins; Optuna is imported only when a search starts.

Hydra imports every module under hydra_plugins/ at the start of every run, so the work lives in
finetune/sweep/optuna_search.py: here, it cost each plain run 0.26 s of importing Optuna.
"""

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Hydra's entry point; the work is in finetune.sweep.optuna_search."""

    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: str,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        params: dict[str, str] | None,
    ) -> None:
        from finetune.sweep.optuna_search import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(
            sampler, pruner, direction, storage, study_name, n_trials, n_jobs, params
        )

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
