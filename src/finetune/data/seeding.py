"""Augmentation randomness as a function of (seed, epoch, index of the batch's first sample).

A data loader worker draws its random crops and shifts from its own stream, which goes on from
epoch to epoch (persistent workers) and starts afresh when the worker does: at a resume, or
with another number of workers. A resumed run would then augment differently from the run it
continues. So each training batch is loaded with torch, `random` and numpy seeded from
(seed, epoch, index of its first sample): a batch gets the same augmentation whichever worker
loads it, and whether or not the run was interrupted (a resume restarts at a batch boundary).

Seeding once a batch, not once a sample, keeps the cost out of sight: saving and restoring
numpy's global state alone takes about a millisecond.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset


class SampleKey(NamedTuple):
    """What a seeded sampler yields in place of an index: the index and its sample's seed."""

    index: int
    seed: int


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed that depends on (seed, epoch, index) only (numpy takes at most 32 bits)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch (CPU), `random` and numpy seeded with `seed` inside; the callers' streams are put
    back after, so loading in the main process (num_workers=0) leaves the training RNG alone."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # torch.manual_seed costs ~1 ms (devices)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class SeededSamples(Dataset):
    """`dataset`, each batch loaded under its own seed when the sampler gives SampleKeys."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey | int) -> Any:
        if not isinstance(key, SampleKey):
            return self.dataset[key]  # in order, unaugmented (feature extraction)
        with seeded(key.seed):
            return self.dataset[key.index]

    def __getitems__(self, keys: list[SampleKey | int]) -> list[Any]:
        """A whole batch (DataLoader's batched fetch), seeded once from its first key; in one
        piece where the wrapped data set fetches batches (data/tracking.py)."""
        if not keys or not isinstance(keys[0], SampleKey):
            return self.fetch(keys)  # type: ignore[arg-type]
        with seeded(keys[0].seed):
            return self.fetch([key.index for key in keys])

    def fetch(self, indices: list[int]) -> list[Any]:
        batched = getattr(type(self.dataset), "__getitems__", None)
        if batched is None:
            return [self.dataset[index] for index in indices]
        return batched(self.dataset, indices)

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found here: the wrapped dataset's (transform, ...).
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
