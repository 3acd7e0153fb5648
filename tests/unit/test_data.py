"""Data splits: sizes, stratification, seeding, class subsets, image folders and their errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from finetune.data import build_splits
from finetune.data.splits import select_classes
from finetune.safety.errors import FinetuneError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DIGITS_PER_CLASS = Counter(
    {0: 178, 1: 182, 2: 177, 3: 183, 4: 181, 5: 182, 6: 181, 7: 179, 8: 174, 9: 180}
)


def data_cfg(name: str, **overrides) -> DictConfig:
    """conf/data/<name>.yaml with overrides: the defaults the command line would use."""
    cfg = OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml")
    return OmegaConf.merge(cfg, overrides)


def labels_of(dataset) -> list[int]:
    return [int(label) for label in dataset.labels]


def test_digits_split_sizes_and_stratification() -> None:
    splits = build_splits(data_cfg("digits"), seed=42)
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797
    assert sizes[1] == pytest.approx(0.15 * 1797, abs=2) and sizes[1] == sizes[2]
    assert splits.class_names == [str(d) for d in range(10)]
    assert splits.kind == "tensor"
    for dataset, fraction in ((splits.val, 0.15), (splits.test, 0.15), (splits.train, 0.7)):
        counts = Counter(labels_of(dataset))
        for label, total in DIGITS_PER_CLASS.items():
            assert abs(counts[label] - fraction * total) <= 2, (label, counts[label])
    image = splits.train.images[0]
    assert image.shape == (3, 8, 8) and image.min() >= 0 and image.max() <= 1


def test_digits_split_is_seeded() -> None:
    first = build_splits(data_cfg("digits"), seed=0)
    again = build_splits(data_cfg("digits"), seed=0)
    other = build_splits(data_cfg("digits"), seed=1)
    assert torch.equal(first.val.images, again.val.images)
    assert labels_of(first.train) == labels_of(again.train)
    assert not torch.equal(first.val.images, other.val.images)


def test_digits_class_subset_relabels_and_names() -> None:
    splits = build_splits(data_cfg("digits", classes=[5, 6, 7, 8, 9]), seed=42)
    assert splits.class_names == ["5", "6", "7", "8", "9"]
    total = len(splits.train) + len(splits.val) + len(splits.test)
    assert total == sum(DIGITS_PER_CLASS[d] for d in range(5, 10))
    assert set(labels_of(splits.train)) == set(range(5))
    counts = Counter(labels_of(splits.train) + labels_of(splits.val) + labels_of(splits.test))
    assert counts[3] == DIGITS_PER_CLASS[8]  # new label 3 is digit 8


def test_select_classes_by_index_or_name_in_the_given_order() -> None:
    labels = torch.tensor([0, 5, 9, 5, 3])
    names = [str(d) for d in range(10)]
    for wanted in ([9, 5], ["9", "5"]):
        indices, new_labels, chosen = select_classes(labels, names, wanted)
        assert list(indices) == [1, 2, 3]
        assert new_labels.tolist() == [1, 0, 1]
        assert chosen == ["9", "5"]


@pytest.mark.parametrize(
    ("wanted", "named"),
    [([5, "eleven"], "eleven"), ([3, 12], "12"), ([4, 4], "[4, 4]"), ([7], "[7]")],
)
def test_bad_classes_name_the_value(wanted: list, named: str) -> None:
    with pytest.raises(FinetuneError, match="data.classes") as error:
        build_splits(data_cfg("digits", classes=wanted), seed=42)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_bad_fractions_are_refused() -> None:
    with pytest.raises(FinetuneError, match="data.val_fraction"):
        build_splits(data_cfg("digits", val_fraction=0.6, test_fraction=0.5), seed=42)


def test_image_folder_with_split_folders(image_tree: Path) -> None:
    splits = build_splits(data_cfg("image_folder", root=str(image_tree)), seed=0)
    assert splits.class_names == ["a", "b", "c"]
    assert (len(splits.train), len(splits.val)) == (24, 12)
    assert "val" in splits.test_source  # no DIR/test: test metrics come from val, and say so
    assert Counter(label for _, label in splits.train.samples) == {0: 8, 1: 8, 2: 8}


def test_image_folder_one_folder_split_by_fraction(tmp_path: Path, make_image_tree) -> None:
    root = make_image_tree(tmp_path / "flat", {"": 10}, ("x", "y"))
    cfg = data_cfg(
        "image_folder", root=str(root), val_fraction=0.2, test_fraction=0.2, classes=["y", "x"]
    )
    splits = build_splits(cfg, seed=0)
    assert splits.class_names == ["y", "x"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 4, 4)
    for path, label in splits.train.samples:
        assert Path(path).parent.name == ["y", "x"][label]


def test_image_folder_errors_name_the_folder(tmp_path: Path, image_tree: Path) -> None:
    with pytest.raises(FinetuneError, match="data.root"):
        build_splits(data_cfg("image_folder"), seed=0)
    with pytest.raises(FinetuneError, match="no/such"):
        build_splits(data_cfg("image_folder", root=str(tmp_path / "no/such")), seed=0)
    (image_tree / "train" / "d").mkdir()
    with pytest.raises(FinetuneError, match=r"train/d has no images"):
        build_splits(data_cfg("image_folder", root=str(image_tree)), seed=0)


def test_unreadable_image_is_named(image_tree: Path) -> None:
    bad = image_tree / "train" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    splits = build_splits(data_cfg("image_folder", root=str(image_tree)), seed=0)
    splits.train.transform = lambda image: np.asarray(image)
    index = [path for path, _ in splits.train.samples].index(str(bad))
    assert splits.train[0][0].shape == (16, 16, 3)
    with pytest.raises(FinetuneError, match="broken.png"):
        splits.train[index]
