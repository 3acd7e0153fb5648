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
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from finetune.data.folders import collate_readable
from finetune.data.loaders import EpochSampler
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
    if cfg.data.augment:
        raise FinetuneError(
            "freeze.cache_features=true needs data.augment=false (random "
            "augmentation would change the features every epoch)"
        )


def cache_key(model: nn.Module, cfg: DictConfig, prep: dict[str, Any]) -> str:
    """A hash of what decides the features: model name, backbone weights, data, preprocessing."""
    digest = hashlib.sha256()
    digest.update(cfg.model.name.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    data = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("batch_size", "num_workers"):
        data.pop(key, None)  # do not change the features
    digest.update(
        json.dumps({"data": data, "prep": prep, "seed": cfg.seed}, sort_keys=True).encode()
    )
    return digest.hexdigest()[:24]


@torch.inference_mode()
def extract(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    name: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled backbone features (timm's forward_head with pre_logits) and labels of a split."""
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_readable,  # images skipped by data.on_bad_image=skip
    )
    features, labels = [], []
    bar = ProgressBar(len(loader), f"features {name}", enabled=True)
    for images, targets in loader:
        pooled = model.forward_head(model.forward_features(images.to(device)), pre_logits=True)
        features.append(pooled.float().cpu())
        labels.append(targets)
        bar.advance()
    bar.close()
    return torch.cat(features), torch.cat(labels)


def feature_loaders(
    model: nn.Module,
    loaders: dict[str, DataLoader],
    cfg: DictConfig,
    prep: dict[str, Any],
    device: torch.device,
) -> dict[str, DataLoader]:
    """Loaders of (features, label) in place of (image, label), from the cache when it has them."""
    directory = cfg.freeze.feature_cache_dir
    path = Path(directory) / f"{cache_key(model, cfg, prep)}.pt" if directory else None
    if path is not None and path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        log.info("Features from the cache: %s", path)
    else:
        cached = {}
        for split, loader in loaders.items():
            features, labels = extract(
                model, loader.dataset, cfg.data.batch_size, loader.num_workers, device, split
            )
            cached[split] = {"features": features, "labels": labels}
        if path is not None:
            save_torch(cached, path)
            log.info("Features cached in %s", path)
    generator = torch.Generator()
    train = TensorDataset(cached["train"]["features"], cached["train"]["labels"])
    sampler = EpochSampler(len(train), cfg.seed, generator)
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
