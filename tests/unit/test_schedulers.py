"""Learning-rate schedules, stepped once per optimizer step as the loop does."""

from __future__ import annotations

import pytest
import torch

from finetune.engine.schedulers import constant, cosine_with_warmup, step_decay


def lrs(make_scheduler, steps: int, base_lr: float = 1.0) -> list[float]:
    """The LR in force at each of `steps` optimizer steps, then the one after the last."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = make_scheduler(optimizer)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    seen.append(optimizer.param_groups[0]["lr"])
    return seen


def test_cosine_warms_up_then_decays_to_min_ratio() -> None:
    steps_per_epoch, epochs, ratio = 10, 5, 0.01
    seen = lrs(
        lambda opt: cosine_with_warmup(
            opt, steps_per_epoch, epochs, warmup_epochs=1, min_lr_ratio=ratio
        ),
        steps_per_epoch * epochs,
        base_lr=0.5,
    )
    warmup = seen[: steps_per_epoch + 1]
    assert all(a < b for a, b in zip(warmup, warmup[1:], strict=False)), warmup
    assert seen[0] < 0.1 * 0.5
    assert max(seen) == pytest.approx(0.5)
    decay = seen[steps_per_epoch:]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False)), decay
    assert seen[-1] == pytest.approx(0.5 * ratio)


def test_cosine_without_warmup_starts_at_base_lr() -> None:
    seen = lrs(lambda opt: cosine_with_warmup(opt, 4, 2, warmup_epochs=0, min_lr_ratio=0.0), 8)
    assert seen[0] == pytest.approx(1.0)
    assert seen[-1] == pytest.approx(0.0, abs=1e-9)


def test_cosine_on_a_one_step_run_is_finite() -> None:
    seen = lrs(lambda opt: cosine_with_warmup(opt, 1, 1, warmup_epochs=1, min_lr_ratio=0.1), 1)
    assert all(0 < lr <= 1 for lr in seen)


def test_step_decay_multiplies_by_gamma_every_period() -> None:
    seen = lrs(lambda opt: step_decay(opt, 3, 10, step_epochs=2, gamma=0.1), 13)
    assert seen[:6] == pytest.approx([1.0] * 6)
    assert seen[6:12] == pytest.approx([0.1] * 6)
    assert seen[12] == pytest.approx(0.01)


def test_constant_keeps_the_base_lr() -> None:
    assert lrs(lambda opt: constant(opt, 5, 2), 10, base_lr=0.3) == pytest.approx([0.3] * 11)
