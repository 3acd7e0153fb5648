"""Training samplers: `data.sampler=random` (a seeded shuffle) or `weighted` (class-balanced).

Both are functions of (seed, epoch) alone and can start mid-epoch (EpochSampler's contract),
so a resumed run draws exactly the batches the uninterrupted run would, and under DDP each rank
takes every world_size-th index of one shared draw.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from finetune.data.loaders import SINGLE_PROCESS, EpochSampler
from finetune.data.splits import labels_of
from finetune.engine.distributed import DistInfo
from finetune.safety.errors import FinetuneError

SAMPLERS = ("random", "weighted")


class WeightedEpochSampler(EpochSampler):
    """Draws an epoch's indices with replacement, each with weight 1 / (its class's size).

    Every class then makes up about the same share of each epoch (torch's
    WeightedRandomSampler), however imbalanced the training split. An epoch has as many samples
    as the split, so steps per epoch, schedules and checkpoints are those of a plain run.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        seed: int,
        loader_generator: torch.Generator,
        rank: DistInfo = SINGLE_PROCESS,
    ) -> None:
        super().__init__(len(labels), seed, loader_generator, rank)
        counts = torch.bincount(labels).double()
        self.weights = (1.0 / counts)[labels]

    def __iter__(self):  # noqa: ANN204 (an iterator of indices)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = self.size * self.world_size
        order = torch.multinomial(self.weights, draw, replacement=True, generator=generator)
        yield from order[self.rank :: self.world_size][self.skip :].tolist()


def train_sampler(
    name: str,
    dataset: Dataset,
    seed: int,
    loader_generator: torch.Generator,
    rank: DistInfo = SINGLE_PROCESS,
) -> EpochSampler:
    """The training split's sampler that `data.sampler` names."""
    if name == "random":
        return EpochSampler(len(dataset), seed, loader_generator, rank)
    if name == "weighted":
        labels = labels_of(dataset)
        if labels.ndim != 1:
            raise FinetuneError(
                "data.sampler=weighted weighs one class per image; multi-label data has several "
                "(use data.sampler=random, and loss.class_weights=auto to weigh the labels)"
            )
        return WeightedEpochSampler(labels.long(), seed, loader_generator, rank)
    raise FinetuneError(f"data.sampler={name} must be one of {', '.join(SAMPLERS)}")
