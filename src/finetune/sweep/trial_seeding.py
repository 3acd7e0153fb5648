"""A sampler seeded per trial, so that workers sharing a study never propose the same trial.

Several sweeps on one storage (nodes sharing a PostgreSQL study, or the same command started
twice) all start from the config's `seed`: one seeded sampler each would propose the same
points in the same order. Seeding each trial from (seed, trial number) instead keeps a search
reproducible and moves every worker apart, because the storage hands each trial its own number;
a resumed study goes on with new numbers, so it never repeats its first trials either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


class PerTrialSeedSampler(BaseSampler):
    """Delegates to a sampler made afresh for each trial with the seed `seed + trial.number`.

    Suits the samplers that keep no state between trials but their random generator (TPE and
    random sampling, the two this plugin configures): they read the history from the study.
    """

    def __init__(self, make: Callable[[int], BaseSampler], seed: int) -> None:
        self.make, self.seed = make, seed
        self.current = make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.current = self.make(self.seed + trial.number)
        self.current.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.current.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.current.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.current.after_trial(study, trial, state, values)
