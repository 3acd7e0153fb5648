"""Which data set a run uses: `data.name` -> the builder of its splits.

Adding a data set is one file in this package with a builder `(cfg.data, seed) -> Splits` and one
YAML in conf/data/ naming it; its entry here is the one line that connects them.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from finetune.data.cifar import cifar10_splits
from finetune.data.digit_canvases import digit_canvases_splits
from finetune.data.digits import digits_splits
from finetune.data.digits_multilabel import digits_multilabel_splits
from finetune.data.folders import image_folder_splits
from finetune.data.hf_datasets import hf_dataset_splits
from finetune.data.manifest import follow_manifest
from finetune.data.mask_folder import mask_folder_splits
from finetune.data.multilabel_table import multilabel_table_splits
from finetune.data.splits import Splits, check_folds
from finetune.data.synthetic_reviews import synthetic_reviews_splits
from finetune.data.tables import image_table_splits
from finetune.data.text import text_table_splits
from finetune.safety.errors import FinetuneError

BUILDERS = {
    "digits": digits_splits,
    "image_folder": image_folder_splits,
    "cifar10": cifar10_splits,
    "digits_multilabel": digits_multilabel_splits,
    "multilabel_table": multilabel_table_splits,
    "image_table": image_table_splits,
    "digit_canvases": digit_canvases_splits,
    "mask_folder": mask_folder_splits,
    "synthetic_reviews": synthetic_reviews_splits,
    "text_table": text_table_splits,
    "hf_dataset": hf_dataset_splits,
}


def build_splits(cfg: DictConfig, seed: int, manifest: dict[str, Any] | None = None) -> Splits:
    """Dispatch on `data.name` to the data set's builder; refuse an empty train or val split.

    With `manifest` (a run's split.json, see manifest.py) the splits are the ones it lists,
    or a clear refusal says what changed.
    """
    if cfg.name not in BUILDERS:
        raise FinetuneError(f"data.name={cfg.name} is unknown; use one of {sorted(BUILDERS)}")
    check_fractions(cfg)
    check_folds(cfg)
    splits = BUILDERS[cfg.name](cfg, seed)
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise FinetuneError(
            f"data={cfg.name} left an empty train or val split ({len(splits.train)} train, "
            f"{len(splits.val)} val images); add data or raise data.val_fraction"
        )
    if manifest is not None:
        splits = follow_manifest(splits, manifest)
    return splits


def check_fractions(cfg: DictConfig) -> None:
    """Fractions in [0, 1) that leave training data."""
    val, test = cfg.val_fraction, cfg.test_fraction
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise FinetuneError(
            f"data.val_fraction={val} and data.test_fraction={test} must each be in [0, 1) "
            "and add up to less than 1"
        )
