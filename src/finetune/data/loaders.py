"""Preprocessing that follows the model, transforms, and seeded DataLoaders."""

from __future__ import annotations

import os
import random
import signal
import threading
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Sampler

from finetune.data.cache import attach_caches, cache_mode
from finetune.data.folders import ImageFiles, collate_readable
from finetune.data.splits import Splits
from finetune.data.tracking import TrackedDataset
from finetune.engine.distributed import DistInfo

SINGLE_PROCESS = DistInfo()


@dataclass
class Preprocessing:
    """Input statistics the model expects; recorded in hparams.yaml."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


def resolve_preprocessing(model: torch.nn.Module, image_size: int) -> Preprocessing:
    """Mean, std and interpolation from timm's resolved data config of `model`.

    A pretrained backbone should see inputs normalised like the ones it learnt on.
    """
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    return Preprocessing(
        image_size, tuple(config["mean"]), tuple(config["std"]), config["interpolation"]
    )


def transforms_for(kind: str, prep: Preprocessing, augment: bool) -> tuple[Any, Any]:
    """(train, eval) transforms: timm's standard ones for PIL images, tensor ones for digits."""
    if kind == "pil":
        from timm.data import create_transform

        common = {
            "input_size": prep.image_size,
            "mean": prep.mean,
            "std": prep.std,
            "interpolation": prep.interpolation,
        }
        eval_tf = create_transform(is_training=False, **common)
        return (create_transform(is_training=True, **common) if augment else eval_tf), eval_tf
    from torchvision.transforms import InterpolationMode, v2

    mode = (
        InterpolationMode(prep.interpolation)
        if prep.interpolation in ("bilinear", "bicubic", "nearest")
        else InterpolationMode.BILINEAR
    )
    resize = v2.Resize((prep.image_size, prep.image_size), interpolation=mode, antialias=True)
    normalize = v2.Normalize(prep.mean, prep.std)
    eval_tf = v2.Compose([resize, v2.Lambda(clamp01), normalize])
    # Small images of symbols: shifts and small rotations, no flips.
    shift = v2.RandomAffine(degrees=10, translate=(0.1, 0.1))
    train_tf = v2.Compose([resize, v2.Lambda(clamp01), shift, normalize])
    return (train_tf if augment else eval_tf), eval_tf


def clamp01(images: torch.Tensor) -> torch.Tensor:
    """Undo the overshoot of bicubic upscaling (a named function, so workers can pickle it)."""
    return images.clamp(0, 1)


def build_loaders(
    cfg: DictConfig,
    splits: Splits,
    prep: Preprocessing,
    seed: int,
    device: torch.device,
    rank: DistInfo = SINGLE_PROCESS,
) -> dict[str, DataLoader]:
    """Seeded loaders: the training order depends on `seed` alone, workers included."""
    folders = [splits.train, splits.val, splits.test]
    if all(isinstance(d, ImageFiles) for d in folders) and cache_mode(cfg, folders, prep) != "none":
        # data.cache: each image decoded once; the transforms then work on uint8 tensors.
        train_tf, eval_tf = attach_caches(cfg, folders, prep, cfg.augment)
    else:
        train_tf, eval_tf = transforms_for(splits.kind, prep, cfg.augment)
    splits.train.transform = train_tf
    splits.val.transform = eval_tf
    splits.test.transform = eval_tf
    workers = worker_count(cfg.num_workers, splits.kind)
    if workers > 0:
        quiet_dead_worker_handoffs()
    common: dict[str, Any] = {
        "batch_size": cfg.batch_size,
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
        "prefetch_factor": cfg.prefetch_factor if workers > 0 else None,
        "worker_init_fn": seed_worker,
        "collate_fn": collate_readable,  # leaves out images skipped by data.on_bad_image=skip
    }
    # A last batch of one sample breaks BatchNorm in training; drop only that one.
    drop_last = len(splits.train) % cfg.batch_size == 1
    generator = torch.Generator()
    sampler = EpochSampler(len(splits.train), seed, generator, rank)

    def tracked(name: str) -> TrackedDataset:
        """The split, with what each worker is loading noted, to name it if the worker dies."""
        return TrackedDataset(getattr(splits, name), name, workers)

    return {
        "train": DataLoader(
            tracked("train"), sampler=sampler, drop_last=drop_last, generator=generator, **common
        ),
        "val": DataLoader(tracked("val"), sampler=Shard(len(splits.val), rank), **common),
        "test": DataLoader(tracked("test"), sampler=Shard(len(splits.test), rank), **common),
    }


def worker_count(num_workers: int | str, kind: str) -> int:
    """data.num_workers, with `auto` from the cores this process may use.

    Data already decoded in memory (digits) gains nothing from workers but their start-up and
    the copies between processes: auto is 0 there. Files need decoding: one core stays with
    the training process, the others (shared between the ranks of this machine) load, up to 8.
    """
    if num_workers != "auto":
        return int(num_workers)
    if kind == "tensor":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun
    return max(0, min(8, (cores or 1) // local_ranks - 1))


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


def quiet_dead_worker_handoffs() -> None:
    """Silence the traceback a killed worker leaves in multiprocessing's fd-sharing thread.

    When a worker dies while handing a batch's shared memory over, Python's resource_sharer
    thread prints a ConnectionResetError traceback; the loader's own error (which names the
    worker and its sample) says what happened in one line. Every other thread error still shows.
    """
    default_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        frames = traceback.extract_tb(args.exc_traceback)
        in_sharer = any(frame.filename.endswith("resource_sharer.py") for frame in frames)
        if in_sharer and issubclass(args.exc_type, (ConnectionError, EOFError)):
            return
        default_hook(args)

    if getattr(threading.excepthook, "__name__", "") != "hook":
        threading.excepthook = hook


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a worker from torch's per-worker seed (PyTorch's recipe).

    Ctrl-C in a terminal reaches the workers too; they ignore it, so that the main process
    can finish its step and save (signals.py) with its workers still there.
    """
    del worker_id
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
