"""data.sampler=length_grouped: batches of similar lengths that keep the samplers' promises (a
function of seed and epoch, resumable mid-epoch, one shared draw sharded under DDP)."""

from __future__ import annotations

import pytest
import torch

from finetune.data.samplers import EpochSampler, LengthGroupedSampler, train_sampler
from finetune.engine.distributed import DistInfo
from finetune.safety.errors import FinetuneError

BATCH = 8
LENGTHS = torch.randint(3, 120, (1001,), generator=torch.Generator().manual_seed(0))


def drawn(sampler: EpochSampler, epoch: int, skip: int = 0) -> list[int]:
    sampler.set_epoch(epoch, skip_batches=skip, batch_size=BATCH)
    return list(sampler)


def grouped(seed: int = 0, rank: int = 0, world_size: int = 1) -> LengthGroupedSampler:
    dist = DistInfo(rank=rank, world_size=world_size)
    return LengthGroupedSampler(LENGTHS, BATCH, seed, torch.Generator(), dist)


def padding_share(order: list[int], batch: int = BATCH) -> float:
    padded = real = 0
    for start in range(0, len(order), batch):
        lengths = LENGTHS[order[start : start + batch]]
        padded += int(lengths.max()) * len(lengths)
        real += int(lengths.sum())
    return 1 - real / padded


def test_an_epoch_is_a_permutation_of_seed_and_epoch_alone():
    first = drawn(grouped(), 1)
    assert sorted(first) == list(range(len(LENGTHS)))
    assert drawn(grouped(), 1) == first
    assert drawn(grouped(), 2) != first and drawn(grouped(seed=1), 1) != first


def test_batches_hold_similar_lengths_longest_first_and_the_short_batch_last():
    order = drawn(grouped(), 1)
    random = drawn(EpochSampler(len(LENGTHS), 0, torch.Generator()), 1)
    assert padding_share(order) < 0.1 < 0.3 < padding_share(random)
    assert int(LENGTHS[order[:BATCH]].max()) == int(LENGTHS.max())
    assert len(order) % BATCH == 1 and order[-1] not in order[:-1]  # 1001 = 125 x 8 + 1


def test_a_mid_epoch_start_draws_the_rest_of_the_same_epoch():
    assert drawn(grouped(), 3, skip=5) == drawn(grouped(), 3)[5 * BATCH :]


def test_ranks_split_one_shared_draw_and_each_step_is_one_global_batch():
    shards = [drawn(grouped(rank=r, world_size=2), 1) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(LENGTHS) // 2
    assert not set(shards[0]) & set(shards[1])
    # Step k of both ranks together: global batch k, whose lengths are alike.
    steps = [i for pair in zip(*shards, strict=True) for i in pair]
    assert padding_share(steps, 2 * BATCH) < 0.1


def test_data_without_lengths_is_refused_with_the_fix():
    images = torch.utils.data.TensorDataset(torch.zeros(4, 1))
    with pytest.raises(FinetuneError, match=r"length_grouped .* \(use data.sampler=random\)"):
        train_sampler("length_grouped", images, 0, torch.Generator(), batch_size=2)
