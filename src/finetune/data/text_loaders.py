"""Seeded loaders of tokenized texts: the image loaders' samplers, a padding collate.

The training order is the images' (data/samplers.py: a function of seed and epoch, resumable
mid-epoch, sharded under DDP), by default grouped into batches of similar lengths
(`data.sampler=length_grouped`); batches are padded to their own longest text, not to
`data.max_length`. Texts are tokenized once (and cached on disk, `data.token_cache`), held in
memory, so workers gain nothing: loading is in the training process.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from finetune.data.loaders import own
from finetune.data.samplers import SINGLE_PROCESS, Shard, train_sampler
from finetune.data.seeding import SeededSamples
from finetune.data.splits import Splits
from finetune.data.text import collate_texts, tokenize
from finetune.engine.distributed import DistInfo


def text_loaders(
    cfg: DictConfig, splits: Splits, tokenizer: Any, seed: int, rank: DistInfo = SINGLE_PROCESS
) -> dict[str, DataLoader]:
    """Tokenize each split (once, or read its cached tokens) and load it in seeded,
    dynamically padded batches (`data.sampler=length_grouped`: of similar lengths)."""
    cache_dir = cfg.cache_dir if cfg.token_cache else None
    for name in ("train", "val", "test"):
        tokenize(getattr(splits, name), tokenizer, cfg.max_length, cache_dir)
    collate = partial(collate_texts, pad_id=int(tokenizer.pad_token_id))
    common: dict[str, Any] = {"batch_size": cfg.batch_size, "collate_fn": collate}
    generator = torch.Generator()
    sampler = train_sampler(
        cfg.sampler, splits.train, seed, generator, rank, seeded=True, batch_size=cfg.batch_size
    )
    return {
        "train": DataLoader(
            SeededSamples(splits.train),
            sampler=sampler,
            drop_last=len(splits.train) % cfg.batch_size == 1,
            generator=generator,
            **common,
        ),
        "val": DataLoader(
            splits.val, sampler=Shard(len(splits.val), rank), generator=own(seed), **common
        ),
        "test": DataLoader(
            splits.test, sampler=Shard(len(splits.test), rank), generator=own(seed), **common
        ),
    }
