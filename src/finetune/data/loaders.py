"""Preprocessing that follows the model, transforms, and seeded DataLoaders."""

from __future__ import annotations

import os
import random
import signal
import sys
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from finetune.data.cache import attach_caches, cache_mode
from finetune.data.folders import ImageFiles, collate_readable
from finetune.data.samplers import SINGLE_PROCESS, Shard, train_sampler
from finetune.data.seeding import SeededSamples
from finetune.data.splits import Splits
from finetune.data.tensors import TensorImages
from finetune.data.tracking import TrackedDataset
from finetune.engine.distributed import DistInfo


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


def resolve_preprocessing(source_prep: dict[str, Any], image_size: int) -> Preprocessing:
    """Mean, std and interpolation the model's source resolved (ModelInfo.preprocessing).

    A pretrained backbone should see inputs normalised like the ones it learnt on.
    """
    return Preprocessing(
        image_size,
        tuple(source_prep["mean"]),
        tuple(source_prep["std"]),
        source_prep["interpolation"],
    )


def transforms_for(kind: str, prep: Preprocessing, augment: bool) -> tuple[Any, Any]:
    """(train, eval) transforms: timm's standard ones for PIL images, tensor ones for digits.

    Images with masks (kind "mask") get joint ones; their training augmentation is the data
    config's (augment.train_transform), so here both are the evaluation transform.
    """
    if kind == "mask":
        from finetune.data.masks import mask_eval_transform

        return mask_eval_transform(prep), mask_eval_transform(prep)
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
    from torchvision.transforms import v2

    from finetune.data.shift_rotate import RandomShiftRotate

    resize = tensor_resize(prep)
    normalize = v2.Normalize(prep.mean, prep.std)
    eval_tf = v2.Compose([resize, v2.Lambda(clamp01), normalize])
    # Small images of symbols: shifts and small rotations, no flips.
    train_tf = v2.Compose([resize, v2.Lambda(clamp01), RandomShiftRotate(10, 0.1), normalize])
    train_tf.batches_as_samples = True  # every step works on each image alone
    return (train_tf if augment else eval_tf), eval_tf


def tensor_resize(prep: Preprocessing) -> Any:
    """Tensor images to the model's side, with its interpolation (bilinear where it has none)."""
    from torchvision.transforms import InterpolationMode, v2

    mode = (
        InterpolationMode(prep.interpolation)
        if prep.interpolation in ("bilinear", "bicubic", "nearest")
        else InterpolationMode.BILINEAR
    )
    return v2.Resize((prep.image_size, prep.image_size), interpolation=mode, antialias=True)


def prepare_tensor_images(
    datasets: list[Any], prep: Preprocessing, eval_tf: Any, budget_mb: float
) -> None:
    """Tensor images resized and clamped to the model's side once, not per sample each epoch,
    and their eval transform (a resize, then elementwise steps) applied a batch at a time.

    Every tensor transform starts with that resize and clamp: it then finds the images at size
    and hands them back as they are (clamping [0, 1] changes nothing), so each input is bitwise
    the one resized per sample (a batch resizes as its samples do). The resize took 98 of the 219
    ms of an unaugmented digits training pass here. Not resized when the result would pass
    `budget_mb`.
    """
    held = [d for d in dict.fromkeys(datasets) if isinstance(d, TensorImages)]
    for dataset in held:
        dataset.batch_transform = eval_tf
    side = prep.image_size
    size_mb = sum(len(d.images) * 3 * side * side * 4 for d in held) / 2**20  # float32
    if size_mb > budget_mb:
        return
    resize = tensor_resize(prep)
    for dataset in held:
        dataset.images = clamp01(resize(dataset.images))


def clamp01(images: torch.Tensor) -> torch.Tensor:
    """Undo the overshoot of bicubic upscaling (a named function, so workers can pickle it)."""
    return images.clamp(0, 1)


def set_transforms(cfg: DictConfig, splits: Splits, prep: Preprocessing) -> None:
    """Each split's transform, with what it reads prepared: decoded caches, tensor images."""
    folders = [splits.train, splits.val, splits.test]
    for dataset in folders:
        if isinstance(dataset, ImageFiles):
            dataset.use_mean(prep.mean)  # data.background=mean: the model's input mean
    if all(isinstance(d, ImageFiles) for d in folders) and cache_mode(cfg, folders, prep) != "none":
        # data.cache: each image decoded once; the transforms then work on uint8 tensors.
        train_tf = eval_tf = attach_caches(cfg, folders, prep)  # engine/build.py: the recipe
    else:
        train_tf, eval_tf = transforms_for(splits.kind, prep, cfg.augment)
    if splits.kind == "tensor":
        prepare_tensor_images(folders, prep, eval_tf, cfg.upscale_once_mb)
    splits.train.transform = train_tf
    splits.val.transform = eval_tf
    splits.test.transform = eval_tf


def build_loaders(
    cfg: DictConfig,
    splits: Splits,
    prep: Preprocessing,
    seed: int,
    device: torch.device,
    rank: DistInfo = SINGLE_PROCESS,
) -> dict[str, DataLoader]:
    """Seeded loaders: training order and augmentation depend on (seed, epoch) alone, workers
    included (data/seeding.py)."""
    set_transforms(cfg, splits, prep)
    kind = "tensor" if decoded_on_cpu(splits.train, device) else splits.kind
    workers = worker_count(cfg.num_workers, kind)
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
    sampler = train_sampler(cfg.sampler, splits.train, seed, generator, rank, seeded=True)

    def tracked(name: str) -> TrackedDataset:
        """The split, with what each worker is loading noted, to name it if the worker dies."""
        return TrackedDataset(getattr(splits, name), name, workers)

    return {
        "train": DataLoader(
            SeededSamples(tracked("train")),
            sampler=sampler,
            drop_last=drop_last,
            generator=generator,
            **common,
        ),
        "val": DataLoader(
            tracked("val"), sampler=Shard(len(splits.val), rank), generator=own(seed), **common
        ),
        "test": DataLoader(
            tracked("test"), sampler=Shard(len(splits.test), rank), generator=own(seed), **common
        ),
    }


def decoded_on_cpu(dataset: Any, device: torch.device) -> bool:
    """Image files decoded once into data.cache, for a model on the CPU: a sample is then a copy
    from memory, and a loader worker only takes cores from the training's own threads. On the
    2-core CI machine (image folder, test_resnet, 3 epochs) no worker trained at 1.14x the bare
    loop and took 160k page faults; one worker, 0.86x and 299k (issue 18)."""
    return device.type == "cpu" and getattr(dataset, "decoded", None) is not None


def worker_count(num_workers: int | str, kind: str) -> int:
    """data.num_workers, with `auto` from the cores this process may use.

    Data already decoded in memory (digits; cached images on the CPU, `decoded_on_cpu`) gains
    nothing from workers but their start-up and the copies between processes: auto is 0 there.
    Files need decoding: one core stays with the training process, the others (shared between
    the ranks of this machine) load, up to 8.
    """
    if num_workers != "auto":
        return int(num_workers)
    if kind == "tensor":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun
    return max(0, min(8, (cores or 1) // local_ranks - 1))


def own(seed: int) -> torch.Generator:
    """A generator for an evaluation loader's worker seeds.

    Without one, a loader draws its workers' base seed from the global RNG whenever it starts
    them: persistent workers start at the first evaluation, which a resumed run reaches at
    another point of the stream than the run it continues (dropout would then differ).
    """
    return torch.Generator().manual_seed(seed)


def quiet_dead_worker_handoffs() -> None:
    """Silence the traceback of a batch handover that the other side left half-way.

    A worker hands a batch's shared memory over through a socket served by a thread of
    multiprocessing's resource_sharer. When one end dies or is interrupted mid-handshake (a
    killed worker; the main process raising PyTorch's dead-worker error while it fetches the
    next batch), that thread's serving loop prints the ConnectionResetError or EOFError through
    sys.excepthook, after the loader's own error has named the worker and its sample in one
    line. Any other error, that thread's or another's, still prints. Installed in the main
    process and in each worker (seed_worker), where those threads run.
    """
    if getattr(sys.excepthook, "quiets_handoffs", False):
        return
    default_hook = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        if issubclass(kind, (ConnectionError, EOFError)) and caught_by_handover_thread(trace):
            return
        default_hook(kind, error, trace)

    hook.quiets_handoffs = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def caught_by_handover_thread(trace: TracebackType | None) -> bool:
    """Whether the error was caught by the serving loop of multiprocessing's fd-sharing thread
    (the traceback starts where it was caught): an uncaught error that merely passed through
    that module, in the main thread, is not."""
    if trace is None:
        return False
    code = trace.tb_frame.f_code
    sharer = os.path.join("multiprocessing", "resource_sharer.py")
    return code.co_name == "_serve" and code.co_filename.endswith(sharer)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a worker from torch's per-worker seed (PyTorch's recipe).

    Ctrl-C in a terminal reaches the workers too; they ignore it, so that the main process
    can finish its step and save (signals.py) with its workers still there.
    """
    del worker_id
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_dead_worker_handoffs()  # a spawned worker does not inherit the main process's hook
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
