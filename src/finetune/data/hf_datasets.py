"""Labelled texts from the `datasets` library: `data=hf_dataset data.dataset=<hub id or folder>`.

`data.dataset` is a hub id (imdb, glue with data.subset=sst2), a builder with local
`data.data_files` (parquet, csv, json), or a folder `save_to_disk` wrote. `data.split_map` says
which of its splits are train, val and test: a null one is drawn stratified from train
(data.val_fraction, data.test_fraction) as for a table, except that with val named and test
null the test metrics come from val (many hub sets hide their test labels). Labels of a
ClassLabel column are its names. `datasets` is imported here only, so other runs never pay its
import.

Offline (HF_HUB_OFFLINE=1, as the tests run), a hub id that is not in the local cache fails at
once in one line that names it and the two ways out.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from finetune.data.splits import Splits, stratified_split
from finetune.data.text import TextSamples, check_texts, text_splits_from
from finetune.safety.errors import FinetuneError

# One split's texts, second texts of a pair (or None) and label names.
Columns = tuple[list[str], list[str] | None, list[str]]


def hf_dataset_splits(cfg: DictConfig, seed: int) -> Splits:
    """The data set's splits as TextSamples, stratified from train where split_map says so."""
    loaded = load(cfg)
    named = {role: cfg.split_map[role] for role in ("train", "val", "test")}
    for role, split in named.items():
        if split is not None and split not in loaded:
            raise FinetuneError(
                f"data.split_map.{role}={split} is not a split of data.dataset={cfg.dataset}; "
                f"its splits are {sorted(loaded)}"
            )
    if named["train"] is None:
        raise FinetuneError("data.split_map.train is null: name the split to train on")
    columns = columns_of(loaded[named["train"]], cfg)
    test = columns_of(loaded[named["test"]], cfg) if named["test"] else None
    if named["val"] is None and test is None:
        return text_splits_from(*columns, cfg, seed)
    if named["val"] is None:  # val drawn from train; the test split as named
        parts = draw_val(columns, cfg, seed)
    else:
        parts = {"train": columns, "val": columns_of(loaded[named["val"]], cfg)}
    parts["test"] = test if test is not None else parts["val"]
    return fixed_splits(parts, "test" if test is not None else f"val ({named['val']})")


def draw_val(columns: Columns, cfg: DictConfig, seed: int) -> dict[str, Columns]:
    """Train and val drawn stratified from the train split (data.val_fraction)."""
    texts, pairs, labels = columns
    only_val = OmegaConf.merge(cfg, {"test_fraction": 0})
    train, val, _ = stratified_split(np.asarray(labels), only_val, seed)

    def pick(idx: np.ndarray) -> Columns:
        chosen = idx.tolist()
        second = [pairs[i] for i in chosen] if pairs is not None else None
        return [texts[i] for i in chosen], second, [labels[i] for i in chosen]

    return {"train": pick(train), "val": pick(val)}


def load(cfg: DictConfig) -> Any:
    """A DatasetDict: from a save_to_disk folder, or load_dataset (hub id or local files)."""
    if not cfg.dataset:
        raise FinetuneError(
            "data=hf_dataset needs data.dataset=<hub id> (e.g. imdb), a save_to_disk folder, "
            "or data.dataset=parquet data.data_files=FILE"
        )
    import datasets

    folder = Path(str(cfg.dataset)).expanduser()
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
        return loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    files = as_plain(cfg.data_files)
    try:
        return datasets.load_dataset(
            str(cfg.dataset), cfg.subset, data_files=files, revision=cfg.revision
        )
    except Exception as error:  # noqa: BLE001 (datasets raises many kinds; each is one line)
        raise load_failure(cfg, error) from None


def load_failure(cfg: DictConfig, error: Exception) -> FinetuneError:
    """Offline and not cached: name the id and the fix; otherwise datasets' own message."""
    if offline():
        return FinetuneError(
            f"data.dataset={cfg.dataset} is not in the local datasets cache and the hub is "
            "offline (HF_HUB_OFFLINE=1): download it once online (unset HF_HUB_OFFLINE), or "
            "give a save_to_disk folder or data.dataset=parquet data.data_files=FILE"
        )
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return FinetuneError(f"data.dataset={cfg.dataset} could not be loaded: {first_line}")


def offline() -> bool:
    return any(
        os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def as_plain(node: Any) -> Any:
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


def columns_of(split: Any, cfg: DictConfig) -> Columns:
    """Texts, pairs and label names of one split; missing columns named with those present."""
    present = list(split.column_names)
    wanted = [cfg.text_column, cfg.label_column] + (
        [cfg.text_pair_column] if cfg.text_pair_column else []
    )
    for column in wanted:
        if column not in present:
            raise FinetuneError(
                f"data.dataset={cfg.dataset} has no column {column!r}; its columns are {present} "
                "(set data.text_column, data.label_column or data.text_pair_column)"
            )
    feature = split.features[cfg.label_column]
    names = getattr(feature, "names", None)  # a ClassLabel: its ints stand for these names
    labels = [names[v] if names and v >= 0 else str(v) for v in split[cfg.label_column]]
    texts = [str(text or "") for text in split[cfg.text_column]]
    pairs = [str(t or "") for t in split[cfg.text_pair_column]] if cfg.text_pair_column else None
    return texts, pairs, labels


def fixed_splits(parts: dict[str, Columns], test_source: str) -> Splits:
    """Splits as the data set names them; classes are the sorted names seen in training."""
    class_names = sorted(set(parts["train"][2]))
    if len(class_names) < 2:
        raise FinetuneError(
            f"every training label is {class_names[0]!r}: a classifier needs at least 2 classes"
        )
    samples, indices, start = {}, {}, 0
    for role, (texts, pairs, labels) in parts.items():
        check_texts(texts, f"data.text_column ({role})")
        unknown = sorted(set(labels) - set(class_names))
        if unknown:
            raise FinetuneError(
                f"the {role} split has labels {unknown[:5]} that training has not "
                f"({class_names}); use data.split_map.val=null to draw val and test from train"
            )
        targets = torch.tensor([class_names.index(label) for label in labels])
        samples[role] = TextSamples(texts, pairs, targets)
        indices[role] = list(range(start, start + len(texts)))
        start += len(texts)
    return Splits(
        samples["train"],
        samples["val"],
        samples["test"],
        class_names,
        "text",
        test_source,
        indices,
    )
