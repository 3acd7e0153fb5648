"""Training samplers: `data.sampler=random` (a seeded shuffle), `weighted` (class-balanced) or
`length_grouped` (a shuffle in batches of similar lengths, for texts).

All are functions of (seed, epoch) alone and can start mid-epoch (EpochSampler's contract),
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

SAMPLERS = ("random", "weighted", "length_grouped")
# How many batches a length_grouped mega-batch holds (the sort window; HF Trainer's choice).
MEGA_BATCH_BATCHES = 50
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


class LengthGroupedSampler(EpochSampler):
    """A shuffle whose batches hold samples of similar lengths, so padding stays small.

    The seeded permutation is cut into mega-batches of `MEGA_BATCH_BATCHES` global batches
    (batch_size x world_size), each sorted by length, longest first, and cut into global
    batches; the full batches are then shuffled, the one with the longest sample moved to the
    front (a batch too big for memory fails at the first step, not at the end of an epoch),
    and a short last batch stays last (so every other batch stays whole). Each rank takes every
    world_size-th index of this shared order, so step k of every rank draws from global batch
    k. Like the others: a function of (seed, epoch) alone, resumable mid-epoch.
    """

    def __init__(
        self,
        lengths: torch.Tensor,
        batch_size: int,
        seed: int,
        loader_generator: torch.Generator,
        rank: DistInfo = SINGLE_PROCESS,
    ) -> None:
        super().__init__(len(lengths), seed, loader_generator, rank)
        self.lengths, self.global_batch = lengths, batch_size * rank.world_size

    def __iter__(self):  # noqa: ANN204 (an iterator of indices)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.total, generator=generator)[: self.size * self.world_size]
        if len(order) == 0:
            return
        mega = self.global_batch * MEGA_BATCH_BATCHES
        groups = [order[start : start + mega] for start in range(0, len(order), mega)]
        # A stable sort, so equal lengths keep their shuffled order.
        ranked = [g[self.lengths[g].argsort(descending=True, stable=True)] for g in groups]
        batches = list(torch.cat(ranked).split(self.global_batch))
        tail = [batches.pop()] if len(batches[-1]) < self.global_batch else []
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        if batches:
            longest = max(range(len(batches)), key=lambda i: int(self.lengths[batches[i]].max()))
            batches[0], batches[longest] = batches[longest], batches[0]
        order = torch.cat(batches + tail)
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


class SeededLengthGroupedSampler(SeededKeys, LengthGroupedSampler):
    pass


def train_sampler(
    name: str,
    dataset: Dataset,
    seed: int,
    loader_generator: torch.Generator,
    rank: DistInfo = SINGLE_PROCESS,
    seeded: bool = False,
    batch_size: int = 1,
) -> EpochSampler:
    """The training split's sampler that `data.sampler` names.

    `seeded` samplers yield (index, seed) keys for SeededSamples (images that are augmented);
    plain ones yield indices (cached features, which are not). `length_grouped` reads the
    samples' `lengths` (tokenized texts) and groups them in batches of `batch_size`.
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
    if name == "length_grouped":
        lengths = getattr(dataset, "lengths", None)
        if lengths is None:
            raise FinetuneError(
                "data.sampler=length_grouped groups texts by their token counts; this data set "
                f"({type(dataset).__name__}) has none (use data.sampler=random)"
            )
        cls = SeededLengthGroupedSampler if seeded else LengthGroupedSampler
        return cls(lengths, batch_size, seed, loader_generator, rank)
    raise FinetuneError(f"data.sampler={name} must be one of {', '.join(SAMPLERS)}")
