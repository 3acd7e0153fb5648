"""OmegaConf resolvers that the configs use; registered before Hydra composes anything."""

from __future__ import annotations

import os
import sys

from omegaconf import OmegaConf

# base path -> directory reserved for it by this process, so every resolution agrees.
_reserved_dirs: dict[str, str] = {}


def unique_dir(base: str) -> str:
    """Reserve a run directory that no other run uses, even one started in the same second.

    `os.mkdir` is atomic: of two processes that race for `base`, one wins and the other takes
    `base_1` (then `_2`, ...). Hydra resolves the run directory several times in one process,
    so the first answer is remembered.
    """
    if base in _reserved_dirs:
        return _reserved_dirs[base]
    if "torch.distributed" in sys.modules:  # under torchrun: rank 0 picks, every rank agrees
        from finetune.engine.distributed import broadcast_from_main, dist_info

        chosen = reserve(base) if dist_info().is_main else None
        _reserved_dirs[base] = str(broadcast_from_main(chosen))
        return _reserved_dirs[base]
    _reserved_dirs[base] = reserve(base)
    return _reserved_dirs[base]


def reserve(base: str) -> str:
    """Create `base`, or `base_1`, `base_2`, ... if taken; return the one created."""
    parent = os.path.dirname(base)
    if parent:
        os.makedirs(parent, exist_ok=True)
    candidate, suffix = base, 0
    while True:
        try:
            os.mkdir(candidate)
            break
        except FileExistsError:
            suffix += 1
            candidate = f"{base}_{suffix}"
    return candidate


def register_resolvers() -> None:
    """Register the project's resolvers once (Hydra may import the entrypoint twice).

    `use_cache` stores the answer in the config, which a launcher pickles to its worker
    processes (joblib, submitit): every job of a sweep then sees the directory the sweep
    reserved, instead of reserving `dir_1`, `dir_2`, ... of its own.
    """
    if not OmegaConf.has_resolver("unique_dir"):
        OmegaConf.register_new_resolver("unique_dir", unique_dir, use_cache=True)
