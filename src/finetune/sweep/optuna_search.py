"""The Optuna sweeper's work: search space, study, ask -> launch -> tell.

Each batch of `n_jobs` trials is asked from the study, handed to Hydra's launcher (in process,
joblib, submitit) as ordinary overrides, and told back its outcome: the value the job returned,
or failed (an exception, a NaN) or pruned -- never fatal to the search. The study lives in
`storage`, so the same command again adds `n_trials` to it and several processes can share it.

With a pruner, each job gets its trial through `hydra.job.env_set` (sweep/pruning.py reads
it and reports every epoch's monitored value), so pruning works with any launcher that can reach
the storage.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    IntervalSweep,
    Override,
    Quote,
    QuotedString,
    Transformer,
)
from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException, HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import Trial, TrialState
from sqlalchemy.engine import make_url

from finetune.sweep.pruning import STORAGE_ENV, STUDY_ENV, TRIAL_ENV
from finetune.sweep.trial_outcomes import error_line, fail, tell
from finetune.sweep.trial_seeding import PerTrialSeedSampler

log = logging.getLogger(__name__)

DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}


class SweepError(CompactHydraException):
    """Bad sweeper input: Hydra prints the message alone (no traceback) and exits 1."""


class OptunaSweeperImpl(Sweeper):
    def __init__(
        self,
        sampler: DictConfig,
        pruner: DictConfig | None,
        direction: str,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        params: DictConfig | None,
    ) -> None:
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs = n_trials, max(1, n_jobs)
        self.params = {str(k): str(v) for k, v in (params or {}).items()}

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)
        # As typed: `${oc.env:VAR}` stays a name here, and in every file Hydra writes.
        self.storage_as_given = OmegaConf.to_container(config.hydra.sweeper, resolve=False)[
            "storage"
        ]

    def sweep(self, arguments: list[str]) -> None:
        if self.direction not in DIRECTIONS:
            raise SweepError(
                f"hydra.sweeper.direction={self.direction} must be max(imize) or min(imize)"
            )
        self.direction = DIRECTIONS[self.direction]
        check_no_password(self.storage_as_given)
        space, fixed = self.search_space(arguments)
        self.check_space(space, fixed)  # composition errors name the key before any trial
        study = self.open_study()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")

        completed, errors = self.run_trials(study, space, fixed)
        self.report(study, completed)
        if errors and len(errors) == self.n_trials:
            raise SweepError(f"all {len(errors)} trials failed; the first: {errors[0]}")

    def run_trials(
        self, study: optuna.Study, space: dict[str, BaseDistribution], fixed: list[str]
    ) -> tuple[int, list[str]]:
        """Ask, launch and tell `n_trials` trials, `n_jobs` at a time: (completed, error lines)."""
        completed, errors, job = 0, [], 0
        while job < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - job))]
            outcomes = self.launch(study, trials, fixed, job)
            job += len(trials)
            for state, error in outcomes:
                completed += state == TrialState.COMPLETE
                errors += [error] if error else []
        return completed, errors

    def launch(
        self, study: optuna.Study, trials: list[Trial], fixed: list[str], first_job: int
    ) -> list[tuple[TrialState, str]]:
        """Run one batch of trials and tell the study how each ended.

        A launcher that raises (a killed submitit job, a preempted node) loses the whole
        batch's returns: its trials are told failed with that error, and the search goes on.
        Interrupted (Ctrl-C), the batch's trials are told failed before the sweep stops, so no
        trial is left RUNNING in the study forever.
        """
        batch = [fixed + trial_overrides(t) + self.env_overrides(study, t) for t in trials]
        try:
            returns = self.launcher.launch(batch, initial_job_idx=first_job)
        except Exception as error:
            line = error_line(error)
            log.warning("The launcher failed (the search goes on): %s", line)
            return [
                fail(study, t, f"trial {t.number} lost: the launcher failed: {line}")
                for t in trials
            ]
        except BaseException:
            for trial in trials:
                fail(study, trial, f"trial {trial.number} lost: the sweep was interrupted")
            raise
        return [tell(study, t, ret) for t, ret in zip(trials, returns, strict=True)]

    def search_space(self, arguments: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
        """Distributions of the swept keys, and the fixed overrides every trial gets.

        `hydra.sweeper.params` come first, so a command-line override of the same key wins.
        """
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        lines = [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        by_key = {o.get_key_element(): o for o in parser.parse_overrides(lines)}
        space = {k: distribution(o) for k, o in by_key.items() if o.is_sweep_override()}
        fixed = [o.input_line for o in by_key.values() if not o.is_sweep_override()]
        return space, fixed

    def check_space(self, space: dict[str, BaseDistribution], fixed: list[str]) -> None:
        """Compose a job config for each key (every choice of a categorical) before any trial."""
        loader = self.hydra_context.config_loader
        loader.load_sweep_config(self.config, fixed)
        for key, dist in space.items():
            for value in example_values(dist):
                try:
                    loader.load_sweep_config(self.config, [*fixed, f"{key}={value}"])
                except HydraException as error:
                    reason = str(error).strip().splitlines()[0]
                    raise SweepError(
                        f"Search space: {key} cannot take {value}: {reason} (the keys and "
                        "options: python train.py --cfg job; python train.py --help)"
                    ) from None

    def open_study(self) -> optuna.Study:
        """Create or load the study; an unusable storage URL is an error before any trial."""
        url = self.storage or f"sqlite:///{(self.sweep_dir / 'optuna.db').resolve()}"
        shown = self.storage_as_given if is_interpolation(self.storage_as_given) else url
        try:
            parsed = make_url(url)
            if shown == url:
                shown = parsed.render_as_string(hide_password=True)
            if parsed.drivername.startswith("sqlite") and parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            study = optuna.create_study(
                storage=url,
                study_name=self.study_name,
                direction=self.direction,
                pruner=instantiate(self.pruner) if self.pruner else None,
                load_if_exists=True,
            )
        except Exception as error:  # SQLAlchemy, a missing driver, a bad URL, ...
            lines = str(error).strip().splitlines() or [type(error).__name__]
            raise SweepError(
                f"hydra.sweeper.storage={shown} cannot be opened: {lines[0]} "
                "(a local file: sqlite:///outputs/optuna.db)"
            ) from None
        if study.direction.name.lower() != self.direction:
            raise SweepError(
                f"study {study.study_name} in {shown} was created to "
                f"{study.direction.name.lower()}; hydra.sweeper.direction={self.direction}"
            )
        self.storage_url, self.shown_url = url, shown
        study.sampler = self.make_sampler()
        log.info(
            "Optuna study %s in %s: %d earlier trials; %d to add (%s, %s)",
            study.study_name,
            shown,
            len(study.trials),
            self.n_trials,
            self.direction,
            type(study.sampler).__name__,
        )
        return study

    def make_sampler(self) -> optuna.samplers.BaseSampler:
        """The sampler; with a seed, seeded per trial (trial_seeding.py says why)."""
        seed = OmegaConf.select(self.sampler, "seed")
        if seed is None:
            return instantiate(self.sampler)
        return PerTrialSeedSampler(lambda s: instantiate(self.sampler, seed=s), seed)

    def env_overrides(self, study: optuna.Study, trial: Trial) -> list[str]:
        """With a pruner: where the job reports its epochs (sweep/pruning.py reads it)."""
        if not self.pruner:
            return []
        # The URL (a password, maybe) goes by this process's environment, which the launcher's
        # jobs inherit; env_set is written into each job's .hydra/hydra.yaml.
        os.environ[STORAGE_ENV] = self.storage_url
        env = {
            TRIAL_ENV: str(trial._trial_id),  # Optuna re-attaches a trial by id: Trial(study, id)
            STUDY_ENV: study.study_name,
        }
        quoted = {key: QuotedString(text=value, quote=Quote.single) for key, value in env.items()}
        return [f"++hydra.job.env_set.{key}={q.with_quotes()}" for key, q in quoted.items()]

    def report(self, study: optuna.Study, completed: int) -> None:
        """Log the best trial so far and write optimization_results.yaml (official plugin's)."""
        log.info(
            "%d of %d trials completed in this sweep; to add more, run again with "
            "hydra.sweeper.storage=%s hydra.sweeper.study_name=%s",
            completed,
            self.n_trials,
            self.shown_url,
            study.study_name,
        )
        if not any(t.state == TrialState.COMPLETE for t in study.trials):
            return
        best = study.best_trial
        log.info("Best trial %d: value %s, params %s", best.number, best.value, best.params)
        results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
        OmegaConf.save(OmegaConf.create(results), self.sweep_dir / "optimization_results.yaml")


def is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def check_no_password(storage: Any) -> None:
    """A password typed into hydra.sweeper.storage would land in every job's .hydra/ files."""
    if not isinstance(storage, str) or is_interpolation(storage):
        return
    try:
        password = make_url(storage).password
    except Exception:  # a malformed URL: open_study names it
        return
    if password:
        raise SweepError(
            "hydra.sweeper.storage holds a password, which would be written into every job's "
            ".hydra/hydra.yaml; put the URL in an environment variable and give "
            "hydra.sweeper.storage='${oc.env:OPTUNA_STORAGE}' instead"
        )


def distribution(override: Override) -> BaseDistribution:
    """interval(a,b) / tag(log, interval(a,b)) / choice(...) / range(a,b[,step]) -> Optuna.

    Hydra parses an interval's ends as floats, so an interval is a float distribution; integers
    come from range, which keeps Hydra's meaning (the stop value is excluded), as in a grid.
    """
    value = override.value()
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        return FloatDistribution(value.start, value.end, log="log" in value.tags)
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if override.is_range_sweep() and len(values) > 1:
        step = values[1] - values[0]
        low, high = min(values), max(values)
        if all(isinstance(v, int) for v in values):
            return IntDistribution(low, high, step=abs(step))
        return FloatDistribution(low, high, step=abs(step))
    return CategoricalDistribution(values)


def example_values(dist: BaseDistribution) -> list[Any]:
    """Values that together test a key: every choice of a categorical, else the low end."""
    if isinstance(dist, CategoricalDistribution):
        return [Transformer.str(choice) for choice in dist.choices]
    return [dist.low]  # type: ignore[attr-defined]


def trial_overrides(trial: Trial) -> list[str]:
    return [f"{key}={Transformer.str(value)}" for key, value in trial.params.items()]
