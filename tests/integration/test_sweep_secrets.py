"""The Optuna storage URL (a password, maybe) is never written into a file of the sweep."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

TINY = (
    "model=test_resnet",
    "debug=fast",
    "data.image_size=16",
    "trainer.progress_bar=false",
    "logger=csv",
    "freeze=none",
)
SECRET = "hunter2-s3cret"


def files_holding(folder: Path, text: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.slow
def test_a_storage_url_from_the_environment_is_written_nowhere(
    run_train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite has no passwords; a secret in the URL's path is as secret for this test.
    storage = f"sqlite:///{tmp_path / SECRET / 'optuna.db'}"
    monkeypatch.setenv("OPTUNA_TEST_STORAGE", storage)
    result = run_train(
        "-m", "hparams_search=optuna", f"paths.log_dir={tmp_path / 'logs'}", *TINY,
        "hydra.sweeper.storage=${oc.env:OPTUNA_TEST_STORAGE}", "hydra.sweeper.study_name=s",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1", "hydra/sweeper/pruner=median",
        own_dir=True,
    )  # fmt: skip
    assert result.returncode == 0, result.output[-3000:]
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert [len(t.intermediate_values) for t in study.trials] == [1, 1]  # pruner reports
    written = tmp_path / "logs"
    assert list(written.rglob("hydra.yaml")), "no job wrote its .hydra/ files"
    assert files_holding(written, SECRET) == []


def test_a_password_typed_into_the_storage_url_is_refused(run_train, tmp_path: Path) -> None:
    result = run_train(
        "-m", "hparams_search=optuna", f"paths.log_dir={tmp_path}", *TINY,
        f"hydra.sweeper.storage=postgresql://user:{SECRET}@localhost/optuna",
        own_dir=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "hydra.sweeper.storage holds a password" in result.output
    assert "${oc.env:OPTUNA_STORAGE}" in result.output
    assert not list(tmp_path.glob("multirun/*/*/*/summary.json")), "a trial ran"
