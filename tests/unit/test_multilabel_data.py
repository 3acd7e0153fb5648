"""Multi-label data: the embedded digit canvases and tables of files with label sets."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from finetune.data.datasets import build_splits
from finetune.data.splits import labels_of
from finetune.safety.errors import FinetuneError

DIGITS = {
    "name": "digits_multilabel",
    "classes": None,
    "val_fraction": 0.15,
    "test_fraction": 0.15,
    "canvases_per_digit": 1.0,
    "max_digits": 3,
    "folds": None,
    "fold": 0,
}


def test_digit_canvases_are_seeded_and_labelled_by_what_they_show():
    splits = build_splits(OmegaConf.create(DIGITS), seed=3)
    again = build_splits(OmegaConf.create(DIGITS), seed=3)
    assert torch.equal(splits.train.images, again.train.images)
    labels = labels_of(splits.train)
    assert labels.shape == (len(splits.train), 10)
    per_image = labels.sum(1)
    assert per_image.min() >= 1 and per_image.max() <= 3
    # Each non-empty 8x8 slot holds one digit, so labels never outnumber the filled slots.
    slots = splits.train.images[:, 0].unfold(1, 8, 8).unfold(2, 8, 8).flatten(1, 2)
    filled = (slots.flatten(2).amax(2) > 0).sum(1)
    assert (per_image <= filled).all()
    assert splits.class_names == [str(d) for d in range(10)]
    splits.val.transform = lambda image: image
    image, target = splits.val[0]
    assert image.shape == (3, 16, 16) and target.shape == (10,)


def write_table(tmp_path, rows: list[str]):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / name)
    table = tmp_path / "labels.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


def table_cfg(path, **more):
    return OmegaConf.create(
        {
            "name": "multilabel_table",
            "path": str(path),
            "root": None,
            "file_column": "file",
            "labels_column": "labels",
            "classes": None,
            "val_fraction": 0.25,
            "test_fraction": 0.0,
            "on_bad_image": "error",
            "background": "white",
            "folds": None,
            "fold": 0,
            **more,
        }
    )


def test_a_table_of_label_sets_becomes_0_1_rows(tmp_path):
    table = write_table(
        tmp_path, ["file,labels", "a.png,cat dog", "b.png,dog|ball", "c.png,", "d.png,cat"]
    )
    splits = build_splits(table_cfg(table), seed=0)
    assert splits.class_names == ["ball", "cat", "dog"]
    everything = {path: label.tolist() for path, label in splits.train.samples + splits.val.samples}
    assert everything[str(tmp_path / "a.png")] == [0, 1, 1]
    assert everything[str(tmp_path / "b.png")] == [1, 0, 1]
    assert everything[str(tmp_path / "c.png")] == [0, 0, 0]
    assert len(splits.val) == 1 and splits.test_source.startswith("val")


def test_a_missing_column_names_the_columns_there_are(tmp_path):
    table = write_table(tmp_path, ["path,tags", "a.png,cat"])
    with pytest.raises(
        FinetuneError, match=r"no column file, labels; its columns are \['path', 'tags'\]"
    ):
        build_splits(table_cfg(table), seed=0)


def test_folds_are_refused_on_multi_label_sets(tmp_path):
    table = write_table(tmp_path, ["file,labels", "a.png,cat", "b.png,dog"])
    with pytest.raises(
        FinetuneError, match="data.folds=3 is not supported by data=multilabel_table"
    ):
        build_splits(table_cfg(table, folds=3), seed=0)
    with pytest.raises(
        FinetuneError, match="data.folds=3 is not supported by data=digits_multilabel"
    ):
        build_splits(OmegaConf.create({**DIGITS, "folds": 3}), seed=0)
