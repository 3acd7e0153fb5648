"""The decoded-image cache (data.cache): the tensors of decoding, remade when a file changes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from finetune.data import Preprocessing, build_loaders, build_splits
from finetune.data import folders as folders_module
from finetune.data.cache import cache_mode, train_transform_on_views
from finetune.data.view_augment import view_recipe

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
PREP = Preprocessing(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
CPU = torch.device("cpu")


def folder_cfg(root: Path, tmp_path: Path, **overrides) -> DictConfig:
    cfg = OmegaConf.load(CONF_DIR / "data" / "image_folder.yaml")
    settings = {"root": str(root), "image_size": 32, "augment": False, "num_workers": 0}
    return OmegaConf.merge(cfg, {**settings, "cache_dir": str(tmp_path / "cache"), **overrides})


def write_mixed_sizes(root: Path) -> Path:
    """Images of several sizes and shapes (so resize and crop matter), 2 classes."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                shape = [(40, 30, 3), (20, 50, 3), (32, 32, 3), (64, 48, 3)][i % 4]
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
                    folder / f"{i}.png"
                )
    return root


def items(cfg: DictConfig, split: str = "train") -> list[torch.Tensor]:
    splits = build_splits(cfg, seed=0)
    dataset = build_loaders(cfg, splits, PREP, 0, torch.device("cpu"))[split].dataset
    return [dataset[i][0] for i in range(len(dataset))]


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_tensors_equal_decoded_ones(tmp_path: Path, mode: str) -> None:
    root = write_mixed_sizes(tmp_path / "images")
    decoded = items(folder_cfg(root, tmp_path, cache="none"))
    cfg = folder_cfg(root, tmp_path, cache=mode)
    loaders = build_loaders(cfg, build_splits(cfg, seed=0), PREP, 0, torch.device("cpu"))
    dataset = loaders["train"].dataset
    first = [dataset[i][0] for i in range(len(dataset))]  # decoded, then kept
    assert bool(dataset.decoded.filled.all())
    second = [dataset[i][0] for i in range(len(dataset))]  # read from the cache
    for plain, filled, read in zip(decoded, first, second, strict=True):
        assert plain.dtype == torch.float32 and plain.shape == (3, 32, 32)
        assert torch.equal(plain, filled) and torch.equal(plain, read)


def test_disk_cache_is_reused_by_the_next_run_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_mixed_sizes(tmp_path / "images")
    first = items(folder_cfg(root, tmp_path, cache="disk"))

    def no_decoding(path: str, background: object) -> None:
        raise AssertionError(f"{path} decoded again")

    monkeypatch.setattr(folders_module, "load_image", no_decoding)
    again = items(folder_cfg(root, tmp_path, cache="disk"))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_disk_cache_is_invalidated_when_a_file_changes(tmp_path: Path) -> None:
    root = write_mixed_sizes(tmp_path / "images")
    cfg = folder_cfg(root, tmp_path, cache="disk")
    before = items(cfg)
    splits = build_splits(cfg, seed=0)
    changed = Path(splits.train.samples[0][0])
    stat = changed.stat()
    # Same size and shape, other pixels; the modification time moves on.
    pixels = 255 - np.asarray(Image.open(changed))
    Image.fromarray(pixels).save(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = items(cfg)
    fresh = items(folder_cfg(root, tmp_path, cache="none"))
    assert not torch.equal(before[0], after[0])
    assert all(torch.equal(a, b) for a, b in zip(after, fresh, strict=True))
    # train before and after the change, and val (unchanged, the same file for both runs)
    assert len(list((tmp_path / "cache").glob("*.pixels"))) == 3


def test_auto_caches_in_memory_only_what_fits_the_budget(tmp_path: Path) -> None:
    root = write_mixed_sizes(tmp_path / "images")
    splits = build_splits(folder_cfg(root, tmp_path), seed=0)
    datasets = [splits.train, splits.val, splits.test]
    # 16 images of 3 x 32 x 32 bytes: 48 KiB.
    fits = folder_cfg(root, tmp_path, cache="auto", cache_memory_mb=1)
    too_small = folder_cfg(root, tmp_path, cache="auto", cache_memory_mb=0.01)
    assert cache_mode(fits, datasets, PREP) == "memory"
    assert cache_mode(too_small, datasets, PREP) == "none"


def test_auto_keeps_to_half_the_free_shared_memory(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A container's small /dev/shm must not fill up (a bus error ends the run): auto is none."""
    import finetune.data.cache as cache

    root = write_mixed_sizes(tmp_path / "images")
    splits = build_splits(folder_cfg(root, tmp_path), seed=0)
    datasets = [splits.train, splits.val, splits.test]
    cfg = folder_cfg(root, tmp_path, cache="auto", cache_memory_mb=1)  # 48 KiB needed
    monkeypatch.setattr(cache, "free_shared_memory_mb", lambda: 0.08)  # 40 KiB usable
    assert cache_mode(cfg, datasets, PREP) == "none"
    monkeypatch.setattr(cache, "free_shared_memory_mb", lambda: 0.2)
    assert cache_mode(cfg, datasets, PREP) == "memory"


def test_unreadable_image_is_skipped_with_the_cache_on(tmp_path: Path) -> None:
    root = write_mixed_sizes(tmp_path / "images")
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    cfg = folder_cfg(root, tmp_path, cache="memory", on_bad_image="skip")
    splits = build_splits(cfg, seed=0)
    dataset = build_loaders(cfg, splits, PREP, 0, torch.device("cpu"))["train"].dataset
    index = [path for path, _ in splits.train.samples].index(str(root / "train/a/broken.png"))
    assert dataset[index] is None and dataset[index] is None
    assert bool(splits.train.skipped[index]) and not bool(splits.train.decoded.filled[index])


def test_auto_starts_no_loader_worker_for_cached_images_on_the_cpu(
    tmp_path: Path,
    monkeypatch,  # noqa: ANN001
) -> None:
    """Decoded once, a sample is a copy from memory: on the CPU a worker would only take cores
    from the training's threads. Files decoded every time, or a GPU model, keep their workers."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    root = write_mixed_sizes(tmp_path / "images")

    def workers(cache: str, device: str) -> int:
        cfg = folder_cfg(root, tmp_path, cache=cache, num_workers="auto")
        splits = build_splits(cfg, seed=0)
        return build_loaders(cfg, splits, PREP, 0, torch.device(device))["train"].num_workers

    assert workers("memory", "cpu") == 0 and workers("disk", "cpu") == 0
    assert workers("none", "cpu") == 3
    assert workers("memory", "cuda") == 3  # a loader starts its workers only when iterated


def batches(loader: torch.utils.data.DataLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images, labels) for images, labels in loader]


@pytest.mark.parametrize("split", ["train", "val"])
def test_decoded_batches_load_in_one_piece_bitwise_as_decoding(
    tmp_path: Path,
    monkeypatch,  # noqa: ANN001
    split: str,
) -> None:
    """Once decoded, a batch is one tensor operation (not one transform call per sample), and
    its tensors are the very ones decoding gives."""
    root = write_mixed_sizes(tmp_path / "images")
    decoded_cfg = folder_cfg(root, tmp_path, cache="none", batch_size=3)
    decoded = batches(build_loaders(decoded_cfg, build_splits(decoded_cfg, 0), PREP, 0, CPU)[split])
    cfg = folder_cfg(root, tmp_path, cache="memory", batch_size=3)
    loader = build_loaders(cfg, build_splits(cfg, 0), PREP, 0, CPU)[split]
    first = batches(loader)  # decodes, sample by sample
    one_piece = []
    load_batch = folders_module.ImageFiles.load_batch
    monkeypatch.setattr(
        folders_module.ImageFiles,
        "load_batch",
        lambda self, indices: one_piece.append(indices) or load_batch(self, indices),
    )
    second = batches(loader)
    assert len(one_piece) == len(second) > 1
    for plain, *cached in zip(decoded, first, second, strict=True):
        for images, labels in cached:
            assert torch.equal(images, plain[0]) and torch.equal(labels, plain[1])


def test_augmented_training_loads_sample_by_sample(tmp_path: Path) -> None:
    """Augmentation draws per sample, so a batch of views under it is not one operation."""
    from torchvision.transforms import v2

    root = write_mixed_sizes(tmp_path / "images")
    cfg = folder_cfg(root, tmp_path, cache="memory")
    splits = build_splits(cfg, 0)
    build_loaders(cfg, splits, PREP, 0, CPU)
    everything = list(range(len(splits.train)))
    for index in everything:
        splits.train[index]  # decoded and kept
    assert splits.train.in_one_piece(everything)
    splits.train.transform = train_transform_on_views(splits.train, v2.RandomCrop(32), True)
    assert not splits.train.in_one_piece(everything)


def test_batched_augmentation_of_views_is_bitwise_the_per_sample_one(
    tmp_path: Path,
    monkeypatch,  # noqa: ANN001
) -> None:
    """timm's recipe on a batch of views (data/view_augment.py), the decoding epoch and an
    unreadable file included, gives the tensors that loading sample by sample gives."""
    root = write_mixed_sizes(tmp_path / "images")
    (root / "train" / "a" / "broken.png").write_bytes(b"not an image")
    light = OmegaConf.load(CONF_DIR / "augment" / "light.yaml")

    def two_epochs(augment: bool) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        cfg = folder_cfg(root, tmp_path, cache="memory", batch_size=3, on_bad_image="skip")
        splits = build_splits(cfg, 0)
        loader = build_loaders(cfg, splits, PREP, 0, CPU)["train"]
        if augment:
            batched = view_recipe(light, PREP)
            splits.train.transform = train_transform_on_views(splits.train, None, True, batched)
        return [batches(loader) for _ in range(2)]  # decoding, then from the cache

    batched = two_epochs(augment=True)
    unaugmented = two_epochs(augment=False)
    monkeypatch.setattr(folders_module.ImageFiles, "in_one_piece", lambda self, indices: False)
    per_sample = two_epochs(augment=True)
    for epoch_a, epoch_b, plain in zip(batched, per_sample, unaugmented, strict=True):
        assert sum(len(labels) for _, labels in epoch_a) == 8  # the broken file left out
        for (images_a, labels_a), (images_b, labels_b), (images_c, _) in zip(
            epoch_a, epoch_b, plain, strict=True
        ):
            assert torch.equal(images_a, images_b) and torch.equal(labels_a, labels_b)
            assert not torch.equal(images_a, images_c)  # augmented indeed
