"""Data: splits of a data set, the transforms the model expects, and seeded loaders.

splits = build_splits(cfg.data, seed)          # raw samples and class names
prep = resolve_preprocessing(info.preprocessing, size)  # mean, std, interpolation
loaders = build_loaders(cfg.data, splits, prep, seed, device)
"""

from finetune.data.datasets import build_splits
from finetune.data.loaders import Preprocessing, build_loaders, resolve_preprocessing
from finetune.data.splits import Splits

__all__ = ["Preprocessing", "Splits", "build_loaders", "build_splits", "resolve_preprocessing"]
