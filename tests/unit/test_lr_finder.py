"""The LR range test (engine/lr_finder.py): the sweep, the suggestion, the plot."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune.data.samplers import EpochSampler
from finetune.engine.loop import Stepper
from finetune.engine.lr_finder import RangeTest, centred, check_lr_find, plot, suggest, sweep_lr
from finetune.safety.errors import FinetuneError
from finetune.tasks.classification import Classification

FIND = OmegaConf.create(
    {
        "start_lr": 1e-5,
        "end_lr": 10.0,
        "num_steps": 60,
        "smoothing": 0.05,
        "diverge": 5.0,
        "rule": "minimum",
        "window": 5,
    }
)


def test_suggestion_by_each_rule() -> None:
    lrs = [10 ** (-6 + i * 0.1) for i in range(60)]
    # Flat, falling fastest around 1e-3 (i = 30), lowest at 1e-1 (i = 50), then diverging.
    losses = [2 - math.tanh((i - 30) / 4) + max(0, i - 50) ** 2 / 10 for i in range(60)]
    assert suggest(lrs, losses, "steepest") == pytest.approx(lrs[30])
    assert suggest(lrs, losses, "minimum") == pytest.approx(lrs[50] / 10)


def test_the_curve_is_smoothed_without_shifting_its_minimum() -> None:
    """A running average's lowest point trails the raw loss's; the centred window's does not."""
    raw = [abs(i - 50) / 10 + 1 for i in range(100)]  # lowest at step 50
    curve = centred(raw, 5)
    assert min(range(100), key=curve.__getitem__) == 50
    assert centred([1.0, 2.0, math.inf], 1) == [1.5, 1.5, 2.0]


def test_sweep_runs_exponentially_and_stops_on_divergence() -> None:
    torch.manual_seed(0)
    features = torch.randn(256, 8)
    labels = (features[:, 0] > 0).long()
    generator = torch.Generator()
    loader = DataLoader(
        TensorDataset(features, labels),
        batch_size=32,
        sampler=EpochSampler(256, 0, generator),
        generator=generator,
    )
    model = nn.Linear(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=FIND.start_lr)
    task = Classification(OmegaConf.create({}), ["negative", "positive"])
    cpu = torch.device("cpu")
    stepper = Stepper(optimizer, None, cpu, None, None, None, model, task, nn.CrossEntropyLoss())
    result = sweep_lr(model, loader, stepper, FIND)
    assert result.lrs[0] == pytest.approx(FIND.start_lr)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios))  # exponential
    assert len(result.lrs) <= FIND.num_steps
    assert FIND.start_lr < result.suggestion < FIND.end_lr
    figure = plot(RangeTest(result.lrs, result.losses, result.suggestion), "test")
    assert figure.axes[0].get_xscale() == "log"


def test_bad_bounds_are_named() -> None:
    bad = OmegaConf.merge(FIND, {"start_lr": 1.0, "end_lr": 0.1})
    with pytest.raises(FinetuneError, match="lr_find.start_lr=1.0 and lr_find.end_lr=0.1"):
        check_lr_find(OmegaConf.create({"lr_find": bad}))
    unknown = OmegaConf.merge(FIND, {"rule": "valley"})
    with pytest.raises(FinetuneError, match="lr_find.rule=valley must be one of minimum, steepest"):
        check_lr_find(OmegaConf.create({"lr_find": unknown}))
