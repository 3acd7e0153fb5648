"""Training samplers: `data.sampler=random` (a seeded shuffle) or `weighted` (class-balanced).

Both are functions of (seed, epoch) alone and can start mid-epoch (EpochSampler's contract),
so a resumed run draws exactly the batches the uninterrupted run would, and under DDP each rank
takes every world_size-th index of one shared draw.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from finetune.data.seeding import SampleKey, sample_seed
from finetune.data.splits import labels_of
from finetune.engine.distributed import DistInfo
from finetune.safety.errors import FinetuneError

SAMPLERS = ("random", "weighted")
SINGLE_PROCESS = DistInfo()


class EpochSampler(Sampler[int]):
    """A shuffle that is a function of (seed, epoch) alone, and can start mid-epoch.

    Like DistributedSampler's set_epoch: no generator state to carry, so a resumed run draws
    the same order, and a step checkpoint skips the batches already done without loading them.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        loader_generator: torch.Generator,
        rank: DistInfo = SINGLE_PROCESS,
    ) -> None:
        # Under DDP each rank takes every world_size-th index of the shared permutation, the
        # tail cut so that all ranks take the same number of steps.
        self.rank, self.world_size = rank.rank, rank.world_size
        self.total, self.size, self.seed = size, size // rank.world_size, seed
        self.epoch, self.skip = 0, 0
        self.loader_generator = loader_generator

    def set_epoch(self, epoch: int, skip_batches: int = 0, batch_size: int = 1) -> None:
        """Start `epoch`, skipping `skip_batches` batches already trained on.

        The loader's own generator (which seeds its workers) is reseeded too: drawn from the
        global RNG instead, a mid-epoch resume would shift the augmentation's random stream.
        """
        self.epoch, self.skip = epoch, skip_batches * batch_size
        self.loader_generator.manual_seed(self.seed + epoch)

    def full_batches(self, loader: DataLoader) -> int:
        """Batches in a whole epoch, whatever the current skip."""
        whole, rest = divmod(self.size, loader.batch_size)
        return whole + (0 if loader.drop_last or rest == 0 else 1)

    def __iter__(self):  # noqa: ANN204 (an iterator of indices)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.total, generator=generator)[: self.size * self.world_size]
        yield from order[self.rank :: self.world_size][self.skip :].tolist()

    def __len__(self) -> int:
        return self.size - self.skip


class Shard(Sampler[int]):
    """This rank's share of an evaluation split, in order: rank, rank + world_size, ...

    Unlike DistributedSampler nothing is padded, so every sample is counted exactly once
    when the metrics are reduced over ranks.
    """

    def __init__(self, size: int, rank: DistInfo) -> None:
        self.indices = range(rank.rank, size, rank.world_size)

    def __iter__(self):  # noqa: ANN204 (an iterator of indices)
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


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


class SeededKeys:
    """A sampler's order, each index with a seed from (seed, epoch, index) (data/seeding.py).

    Augmentation then depends on (seed, epoch, index) alone, so a resumed run, with loader
    workers or without, augments each sample as the uninterrupted run did.
    """

    seed: int
    epoch: int

    def __iter__(self):  # noqa: ANN204 (an iterator of SampleKeys)
        for index in super().__iter__():  # type: ignore[misc]
            yield SampleKey(index, sample_seed(self.seed, self.epoch, index))


class SeededEpochSampler(SeededKeys, EpochSampler):
    pass


class SeededWeightedEpochSampler(SeededKeys, WeightedEpochSampler):
    pass


def train_sampler(
    name: str,
    dataset: Dataset,
    seed: int,
    loader_generator: torch.Generator,
    rank: DistInfo = SINGLE_PROCESS,
    seeded: bool = False,
) -> EpochSampler:
    """The training split's sampler that `data.sampler` names.

    `seeded` samplers yield (index, seed) keys for SeededSamples (images that are augmented);
    plain ones yield indices (cached features, which are not).
    """
    if name == "random":
        cls = SeededEpochSampler if seeded else EpochSampler
        return cls(len(dataset), seed, loader_generator, rank)
    if name == "weighted":
        labels = labels_of(dataset)
        if labels.ndim != 1:
            raise FinetuneError(
                "data.sampler=weighted weighs one class per image; multi-label data has several "
                "(use data.sampler=random, and loss.class_weights=auto to weigh the labels)"
            )
        cls = SeededWeightedEpochSampler if seeded else WeightedEpochSampler
        return cls(labels.long(), seed, loader_generator, rank)
    raise FinetuneError(f"data.sampler={name} must be one of {', '.join(SAMPLERS)}")
