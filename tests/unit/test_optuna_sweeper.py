"""The Optuna sweeper's pieces: search-space syntax, telling outcomes, seeds, pruning reports."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from finetune.sweep import pruning
from hydra_plugins.finetune_optuna_sweeper._impl import (
    OptunaSweeperImpl,
    distribution,
    example_values,
    tell,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def parse(line: str):
    return OverridesParser.create().parse_overrides([line])[0]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("lr=interval(0.001, 0.1)", FloatDistribution(0.001, 0.1)),
        ("lr=tag(log, interval(1e-5, 1e-2))", FloatDistribution(1e-5, 1e-2, log=True)),
        ("layers=interval(1, 8)", FloatDistribution(1, 8)),  # Hydra parses floats: use range
        ("layers=range(1, 9)", IntDistribution(1, 8)),
        ("bs=choice(32, 64, 128)", CategoricalDistribution([32, 64, 128])),
        ("freeze=none,backbone", CategoricalDistribution(["none", "backbone"])),
        ("epochs=range(2, 10, 2)", IntDistribution(2, 8, step=2)),  # stop excluded, as in a grid
    ],
)
def test_official_syntax_maps_to_optuna_distributions(line: str, expected) -> None:
    assert distribution(parse(line)) == expected


def test_example_values_try_every_choice() -> None:
    assert example_values(CategoricalDistribution(["none", "backbone"])) == ["none", "backbone"]
    assert example_values(FloatDistribution(0.1, 0.2)) == [0.1]


def job(status: JobStatus, value, tmp_path: Path) -> JobReturn:
    hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}})
    return JobReturn(status=status, _return_value=value, hydra_cfg=hydra_cfg)


def test_failed_nan_and_pruned_trials_are_told_not_raised(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    outcomes = [
        (job(JobStatus.COMPLETED, 0.75, tmp_path), TrialState.COMPLETE),
        (job(JobStatus.COMPLETED, float("nan"), tmp_path), TrialState.FAIL),
        (job(JobStatus.FAILED, RuntimeError("CUDA out of memory"), tmp_path), TrialState.FAIL),
        (job(JobStatus.FAILED, optuna.TrialPruned("epoch 2"), tmp_path), TrialState.PRUNED),
    ]
    for ret, state in outcomes:
        trial = study.ask({"lr": FloatDistribution(0.001, 0.1)})
        assert tell(study, trial, ret)[0] == state
    trials = study.trials
    assert [t.state for t in trials] == [state for _, state in outcomes]
    assert trials[0].value == 0.75 and trials[0].user_attrs["run_dir"] == str(tmp_path)
    assert "not a finite number" in trials[1].user_attrs["error"]
    assert "CUDA out of memory" in trials[2].user_attrs["error"]


def test_a_resumed_study_moves_the_sampler_seed_on() -> None:
    sampler = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 7})
    sweeper = OptunaSweeperImpl(sampler, None, "max", None, None, 3, 1, None)
    space = {"lr": FloatDistribution(0.001, 0.1)}

    def first_values(earlier: int) -> list[float]:
        study = optuna.create_study(sampler=sweeper.make_sampler(earlier))
        return [study.ask(space).params["lr"] for _ in range(3)]

    assert first_values(0) == first_values(0), "a seeded sampler repeats itself"
    assert first_values(3) != first_values(0), "a resumed search would repeat its first trials"


@pytest.fixture
def trial_env(tmp_path: Path, monkeypatch):
    """A study in sqlite with one running trial, and the job environment the sweeper sets."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask()
    monkeypatch.setenv(pruning.TRIAL_ENV, str(trial._trial_id))
    monkeypatch.setenv(pruning.STUDY_ENV, "s")
    monkeypatch.setenv(pruning.STORAGE_ENV, storage)
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 0.5}
    # The job's Hydra config holds the pruner's settings (hydra.sweeper.pruner).
    job_cfg = OmegaConf.create({"hydra": {"sweeper": {"pruner": pruner}}})
    monkeypatch.setattr(HydraConfig.instance(), "cfg", job_cfg)
    return study


def test_report_gives_the_trial_each_epoch_and_prunes(trial_env) -> None:
    pruning.report(1, 0.8)  # above the threshold: goes on
    with pytest.raises(optuna.TrialPruned):
        pruning.report(2, 0.2)
    assert trial_env.trials[0].intermediate_values == {1: 0.8, 2: 0.2}


def test_report_outside_an_optuna_job_does_nothing(monkeypatch) -> None:
    monkeypatch.delenv(pruning.TRIAL_ENV, raising=False)
    pruning.report(1, 0.0)  # no study, no Hydra: must not fail
