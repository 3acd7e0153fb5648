"""Feature cache for linear probing: run a frozen backbone once, train the head on its output.

With the backbone frozen and no random augmentation, every epoch would compute the same
features again; caching them makes epochs after the first cost only the head's step. On disk,
the cache is keyed by the model, its weights, the data and the preprocessing, so a sweep over
head hyper-parameters reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from finetune.data.folders import collate_readable
from finetune.data.samplers import train_sampler
from finetune.engine.checkpoint import save_torch
from finetune.records.progress import ProgressBar
from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)


def check_cache_features(cfg: DictConfig) -> None:
    """The cache is only right for a frozen backbone that always sees the same images."""
    if not cfg.freeze.cache_features:
        return
    if cfg.freeze.policy != "backbone":
        raise FinetuneError(
            f"freeze.cache_features=true needs freeze=backbone, not freeze={cfg.freeze.policy}"
        )
    from finetune.data.augment import augmenting

    mixes = cfg.augment.name != "none" and (cfg.augment.mixup_alpha or cfg.augment.cutmix_alpha)
    if mixes:
        raise FinetuneError(
            f"freeze.cache_features=true cannot mix images (augment={cfg.augment.name} has "
            "mixup/cutmix); use augment=none, or augment.mixup_alpha=0 augment.cutmix_alpha=0"
        )
    if augmenting(cfg.augment, cfg.data):
        raise FinetuneError(
            "freeze.cache_features=true needs augmentation off, augment=none or "
            "data.augment=false (random augmentation would change the features every epoch)"
        )


def cache_key(
    model: nn.Module, cfg: DictConfig, prep: dict[str, Any], datasets: list[Dataset]
) -> str | None:
    """A hash of what decides the features: model name, backbone weights, the data's content,
    its config and the preprocessing. None when a data set's content cannot be told apart
    (then the features are not kept on disk).
    """
    digest = hashlib.sha256()
    digest.update(f"{cfg.model.source}:{cfg.model.name}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for dataset in datasets:
        if not add_content(digest, dataset):
            log.warning(
                "freeze.cache_features: cannot fingerprint the content of %s; the features "
                "are kept in memory only",
                type(dataset).__name__,
            )
            return None
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("batch_size", "num_workers"):
        data.pop(key, None)  # do not change the features
    digest.update(
        json.dumps({"data": data, "prep": prep, "seed": cfg.seed}, sort_keys=True).encode()
    )
    return digest.hexdigest()[:24]


def add_content(digest: Any, dataset: Dataset) -> bool:
    """Feed what the samples hold into `digest`; False for a kind of data set it cannot read.

    Image files count by path, size, modification time and label (a rewritten or added file
    gives a new key without reading every image); images in memory by their bytes; tokenized
    texts by their tokens.
    """
    encoded = getattr(dataset, "encoded", None)  # TextSamples, tokenized
    if encoded is not None:
        for tokens in encoded:
            digest.update(tokens.numpy().tobytes() + b"\0")
        digest.update(dataset.labels.numpy().tobytes())
        return True
    samples = getattr(dataset, "samples", None)  # ImageFiles, InMemoryImages
    tensors = getattr(dataset, "tensors", None)  # TensorDataset
    if samples is not None:
        for item, label in samples:
            if isinstance(item, (str, os.PathLike)):
                stat = os.stat(item)
                digest.update(f"{item}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
            else:  # a PIL image held in memory
                digest.update(item.tobytes())
                digest.update(f"{item.mode}{item.size}\0{label}\n".encode())
        return True
    if tensors is None and hasattr(dataset, "images") and hasattr(dataset, "labels"):
        tensors = (dataset.images, dataset.labels)  # TensorImages
    if tensors is None:
        return False
    for tensor in tensors:
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return True


@torch.inference_mode()
def extract(
    model: nn.Module,
    head: nn.Module,
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    name: str,
    collate: Any = collate_readable,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's input (pooled backbone features) and the labels of a split.

    A hook on the head reads its input, so this works for any source's model. `collate` is the
    split loader's: images skipped by data.on_bad_image=skip, texts padded.
    """
    model.eval()
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate
    )
    features, labels = [], []
    hook = head.register_forward_pre_hook(lambda _, args: features.append(args[0].float().cpu()))
    bar = ProgressBar(len(loader), f"features {name}", enabled=True)
    try:
        for images, targets in loader:
            model(images.to(device))
            labels.append(targets)
            bar.advance()
    finally:
        hook.remove()
        bar.close()
    return torch.cat(features), torch.cat(labels)


def feature_loaders(
    model: nn.Module,
    head: nn.Module,
    loaders: dict[str, DataLoader],
    cfg: DictConfig,
    prep: dict[str, Any],
    device: torch.device,
) -> dict[str, DataLoader]:
    """Loaders of (features, label) in place of (image, label), from the cache when it has them."""
    directory = cfg.freeze.feature_cache_dir
    path = None
    if directory:
        datasets = [loaders[split].dataset for split in ("train", "val", "test")]
        key = cache_key(model, cfg, prep, datasets)
        path = Path(directory) / f"{key}.pt" if key is not None else None
    if path is not None and path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        log.info("Features from the cache: %s", path)
    else:
        cached = {}
        for split, loader in loaders.items():
            features, labels = extract(
                model,
                head,
                loader.dataset,
                cfg.data.batch_size,
                loader.num_workers,
                device,
                split,
                loader.collate_fn,
            )
            cached[split] = {"features": features, "labels": labels}
        if path is not None:
            save_torch(cached, path)
            log.info("Features cached in %s", path)
    generator = torch.Generator()
    train = TensorDataset(cached["train"]["features"], cached["train"]["labels"])
    train.lengths = getattr(loaders["train"].dataset, "lengths", None)  # length_grouped's order
    sampler = train_sampler(
        cfg.data.sampler, train, cfg.seed, generator, batch_size=cfg.data.batch_size
    )
    result = {
        "train": DataLoader(
            train,
            batch_size=cfg.data.batch_size,
            sampler=sampler,
            drop_last=loaders["train"].drop_last,
            generator=generator,
        )
    }
    for split in ("val", "test"):
        data = TensorDataset(cached[split]["features"], cached[split]["labels"])
        result[split] = DataLoader(data, batch_size=cfg.data.batch_size, shuffle=False)
    return result
