"""data.sampler (data/samplers.py) and per-class counts (data/class_counts.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from finetune.data.class_counts import class_counts, report_class_counts
from finetune.data.samplers import (
    SINGLE_PROCESS,
    EpochSampler,
    WeightedEpochSampler,
    train_sampler,
)
from finetune.data.splits import labels_of
from finetune.data.tensors import TensorImages
from finetune.engine.distributed import DistInfo
from finetune.safety.errors import FinetuneError

# 10:1 imbalance: 100 images of class 0, 10 of class 1.
LABELS = torch.tensor([0] * 100 + [1] * 10)


def epoch_indices(sampler: EpochSampler, epoch: int, skip: int = 0) -> list[int]:
    sampler.set_epoch(epoch, skip_batches=skip, batch_size=1)
    return list(sampler)


def weighted(rank: DistInfo = SINGLE_PROCESS) -> WeightedEpochSampler:
    return WeightedEpochSampler(LABELS, seed=3, loader_generator=torch.Generator(), rank=rank)


def test_weighted_sampler_draws_classes_about_equally() -> None:
    drawn = torch.tensor(
        [int(LABELS[i]) for e in range(1, 6) for i in epoch_indices(weighted(), e)]
    )
    share_of_small = (drawn == 1).float().mean().item()
    assert 0.4 < share_of_small < 0.6  # a plain shuffle gives 10/110 = 0.09
    assert len(drawn) == 5 * len(LABELS)  # an epoch is as long as the split


def test_weighted_sampler_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch() -> None:
    first, again = weighted(), weighted()
    assert epoch_indices(first, 2) == epoch_indices(again, 2)
    assert epoch_indices(first, 2) != epoch_indices(first, 3)
    assert epoch_indices(again, 2, skip=7) == epoch_indices(first, 2)[7:]


def test_weighted_sampler_ranks_share_one_draw() -> None:
    ranks = [weighted(DistInfo(rank=r, world_size=2)) for r in (0, 1)]
    shares = [epoch_indices(sampler, 1) for sampler in ranks]
    whole = epoch_indices(weighted(), 1)
    assert len(shares[0]) == len(shares[1]) == len(whole) // 2
    assert shares[0] == whole[0::2] and shares[1] == whole[1::2]


def test_train_sampler_by_name() -> None:
    data = TensorImages(torch.zeros(len(LABELS), 3, 2, 2), LABELS)
    assert type(train_sampler("random", data, 0, torch.Generator())) is EpochSampler
    assert isinstance(train_sampler("weighted", data, 0, torch.Generator()), WeightedEpochSampler)
    with pytest.raises(
        FinetuneError, match="data.sampler=balanced must be one of random, weighted"
    ):
        train_sampler("balanced", data, 0, torch.Generator())


def test_class_counts_and_the_few_validation_images_warning(caplog) -> None:
    train = TensorImages(torch.zeros(len(LABELS), 3, 2, 2), LABELS)
    val = TensorImages(torch.zeros(7, 3, 2, 2), torch.tensor([0] * 5 + [1] * 2))
    counts = class_counts({"train": train, "val": val}, ["big", "small"])
    assert counts == {"train": {"big": 100, "small": 10}, "val": {"big": 5, "small": 2}}
    with caplog.at_level(logging.INFO):
        report_class_counts(counts, min_val_per_class=5)
    assert "train images per class: big: 100, small: 10" in caplog.text
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "small (2)" in warnings[0] and "big" not in warnings[0]


def test_labels_of_a_data_set_without_labels_is_named() -> None:
    with pytest.raises(FinetuneError, match="list lists no labels"):
        labels_of([1, 2, 3])


def test_weighted_sampler_refuses_multi_label_data() -> None:
    rows = TensorImages(torch.zeros(4, 3, 2, 2), torch.tensor([[1, 0], [1, 1], [0, 1], [1, 0]]))
    with pytest.raises(FinetuneError, match="multi-label data has several"):
        train_sampler("weighted", rows, 0, torch.Generator())
    counts = class_counts({"train": rows}, ["a", "b"])
    assert counts == {"train": {"a": 3, "b": 2}}
