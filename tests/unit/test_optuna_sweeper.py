"""The Optuna sweeper's pieces: search-space syntax, telling outcomes, seeds, pruning reports."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import optuna
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from finetune.sweep import pruning
from finetune.sweep import storage as storage_retry
from finetune.sweep.optuna_search import (
    OptunaSweeperImpl,
    distribution,
    example_values,
)
from finetune.sweep.trial_outcomes import tell

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


SPACE = {"lr": FloatDistribution(0.001, 0.1)}


def seeded_sweeper(n_jobs: int = 1) -> OptunaSweeperImpl:
    sampler = OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 7})
    return OptunaSweeperImpl(sampler, None, "max", None, None, 3, n_jobs, None)


def test_a_seeded_search_repeats_itself_and_a_resumed_one_goes_on(tmp_path: Path) -> None:
    def proposals(storage: str, n: int) -> list[float]:
        study = optuna.create_study(storage=storage, study_name="s", load_if_exists=True)
        study.sampler = seeded_sweeper().make_sampler()
        return [study.ask(SPACE).params["lr"] for _ in range(n)]

    first = proposals(f"sqlite:///{tmp_path / 'a.db'}", 3)
    assert first == proposals(f"sqlite:///{tmp_path / 'b.db'}", 3), "the same seed, the same search"
    resumed = proposals(f"sqlite:///{tmp_path / 'a.db'}", 3)  # the same command again
    assert not set(resumed) & set(first), "a resumed search repeats its first trials"


def test_workers_sharing_a_study_and_a_seed_propose_different_trials(tmp_path: Path) -> None:
    """Two sweeps started on one storage with the same seed (two nodes, the same command)."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(storage=storage, study_name="s")
    workers = []
    for _ in range(2):
        study = optuna.load_study(storage=storage, study_name="s")
        study.sampler = seeded_sweeper().make_sampler()
        workers.append(study)
    # Each worker asks its first trial before either has told one back.
    proposed = [study.ask(SPACE).params["lr"] for study in workers for _ in range(2)]
    assert len(set(proposed)) == len(proposed), f"workers proposed the same trials: {proposed}"


class LauncherThatFailsOnce:
    """Raises on its first batch (a killed submitit job raises out of launch), then succeeds."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path, self.batches = tmp_path, 0

    def launch(self, batch: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
        self.batches += 1
        if self.batches == 1:
            raise RuntimeError("Job 123 (task: 0) with path /x/123_0_result.pkl\nhas not produced")
        return [job(JobStatus.COMPLETED, 0.5, self.tmp_path) for _ in batch]


def test_a_launcher_that_raises_fails_its_trials_and_the_search_goes_on(tmp_path: Path) -> None:
    sweeper = seeded_sweeper(n_jobs=2)
    sweeper.n_trials = 4
    sweeper.launcher = LauncherThatFailsOnce(tmp_path)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")
    completed, errors = sweeper.run_trials(study, SPACE, fixed=[])
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] * 2, "trials left RUNNING?"
    assert completed == 2 and len(errors) == 2
    assert "the launcher failed: Job 123" in study.trials[0].user_attrs["error"]


def test_an_interrupted_sweep_leaves_no_trial_running(tmp_path: Path) -> None:
    sweeper = seeded_sweeper(n_jobs=2)

    class Interrupted:
        def launch(self, batch, initial_job_idx):
            raise KeyboardInterrupt

    sweeper.launcher = Interrupted()
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    with pytest.raises(KeyboardInterrupt):
        sweeper.run_trials(study, SPACE, fixed=[])
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2


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


def test_an_epoch_report_waits_out_a_locked_database(trial_env, tmp_path, monkeypatch) -> None:
    """Another job holds the SQLite study locked when this one reports: it retries, not dies."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}?timeout=0.05"  # SQLite's own wait: short
    monkeypatch.setenv(pruning.STORAGE_ENV, storage)
    other_job = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None)
    other_job.execute("BEGIN EXCLUSIVE")
    pauses = []

    def other_job_finishes(attempt: int) -> None:  # after the first failed try: a state
        pauses.append(attempt)
        if other_job.in_transaction:
            other_job.execute("COMMIT")

    monkeypatch.setattr(storage_retry, "backoff", other_job_finishes)
    pruning.report(1, 0.8)
    assert pauses == [0], "the lock was never met, or more than one retry was needed"
    assert trial_env.trials[0].intermediate_values == {1: 0.8}


def test_a_lasting_storage_fault_still_surfaces(trial_env, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(pruning.STORAGE_ENV, f"sqlite:///{tmp_path / 'optuna.db'}?timeout=0.01")
    other_job = sqlite3.connect(tmp_path / "optuna.db", isolation_level=None)
    other_job.execute("BEGIN EXCLUSIVE")
    pauses = []
    monkeypatch.setattr(storage_retry, "backoff", pauses.append)
    with pytest.raises(OperationalError, match="database is locked"):
        pruning.report(1, 0.8)
    assert len(pauses) == storage_retry.ATTEMPTS - 1
    other_job.execute("ROLLBACK")


def report_on_rank(rank: int, init_file: str, thresholds: list[float], results: str) -> None:
    """One DDP rank (gloo) of a trial reporting epoch 1: records whether it was told to stop."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": thresholds[rank]}
    HydraConfig.instance().cfg = OmegaConf.create({"hydra": {"sweeper": {"pruner": pruner}}})
    try:
        pruning.report(1, 0.3)
        outcome = "went on"
    except optuna.TrialPruned:
        outcome = "pruned"
    Path(results, f"rank{rank}").write_text(outcome)
    dist.destroy_process_group()


def test_under_ddp_rank_0_decides_pruning_for_every_rank(trial_env, tmp_path) -> None:
    """Ranks that ask the pruner on their own can disagree; then the one going on hangs.

    In a run they disagree by when each asks (another trial reported in between); here each
    rank's pruner has its own threshold, so that asking on their own they disagree for sure.
    """
    context = multiprocessing.get_context("spawn")  # the env (trial, storage) is inherited
    args = (str(tmp_path / "init"), [0.5, 0.1], str(tmp_path))
    ranks = [context.Process(target=report_on_rank, args=(r, *args)) for r in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=120)
    for process in ranks:
        process.kill()  # still running after two minutes: waiting for an answer
    outcomes = [
        (tmp_path / f"rank{r}").read_text() if (tmp_path / f"rank{r}").exists() else "hung"
        for r in range(2)
    ]
    assert outcomes == ["pruned", "pruned"], "rank 0's pruner says stop: every rank stops"
    assert trial_env.trials[0].intermediate_values == {1: 0.3}
