"""Early stopping (engine/early_stopping.py): patience, min_delta, mode, state."""

from __future__ import annotations

import pytest

from finetune.engine.early_stopping import EarlyStopping
from finetune.safety.errors import FinetuneError


def epochs_until_stop(stopper: EarlyStopping, scores: list[float]) -> int | None:
    for epoch, score in enumerate(scores, start=1):
        if stopper.step(score):
            return epoch
    return None


def test_stops_after_patience_epochs_without_improvement() -> None:
    stopper = EarlyStopping(patience=2, min_delta=0.0, mode="max")
    assert epochs_until_stop(stopper, [0.5, 0.6, 0.6, 0.55, 0.9]) == 4


def test_min_delta_ignores_small_gains_and_mode_min_looks_down() -> None:
    stopper = EarlyStopping(patience=2, min_delta=0.05, mode="max")
    assert epochs_until_stop(stopper, [0.5, 0.52, 0.54, 0.9]) == 3
    lower = EarlyStopping(patience=1, min_delta=0.0, mode="min")
    assert epochs_until_stop(lower, [1.0, 0.8, 0.7, 0.75]) == 4


def test_patience_null_never_stops() -> None:
    assert epochs_until_stop(EarlyStopping(None, 0.0, "max"), [0.9] + [0.1] * 50) is None


def test_state_carries_over_a_resume() -> None:
    first = EarlyStopping(patience=3, min_delta=0.0, mode="max")
    epochs_until_stop(first, [0.5, 0.4, 0.3])  # two bad epochs
    resumed = EarlyStopping(patience=3, min_delta=0.0, mode="max")
    resumed.load_state_dict(first.state_dict())
    assert resumed.step(0.45) is True


@pytest.mark.parametrize(("patience", "delta"), [(0, 0.0), (1.5, 0.0), (2, -0.1)])
def test_bad_settings_are_named(patience: object, delta: float) -> None:
    with pytest.raises(FinetuneError, match="trainer.patience|trainer.min_delta"):
        EarlyStopping(patience, delta, "max")
