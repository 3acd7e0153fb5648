"""The split manifest: a resume or an evaluation runs on the data the run started with."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from finetune.data import build_splits
from finetune.data.manifest import DataChanged, checked_manifest, split_manifest

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def data_cfg(name: str, **overrides):
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml"), overrides)


def files_of(dataset) -> list[str]:
    return [path for path, _ in dataset.samples]


def saved(splits) -> dict:
    """The manifest as split.json holds it (through JSON, as a resume reads it)."""
    return json.loads(json.dumps(split_manifest(splits)))


@pytest.fixture
def flat_tree(tmp_path: Path, make_image_tree) -> Path:
    """One folder of classes x and y, 10 images each, split by fractions."""
    return make_image_tree(tmp_path / "flat", {"": 10}, ("x", "y"))


def flat_cfg(root: Path):
    return data_cfg("image_folder", root=str(root), val_fraction=0.2, test_fraction=0.2)


def test_the_manifest_lists_each_splits_files_labels_and_classes(flat_tree: Path) -> None:
    splits = build_splits(flat_cfg(flat_tree), seed=0)
    manifest = saved(splits)
    assert manifest["classes"] == ["x", "y"]
    train = manifest["splits"]["train"]
    assert train["size"] == 12 and len(train["sha256"]) == 64
    assert train["files"] == [str(Path(p).relative_to(flat_tree)) for p in files_of(splits.train)]
    assert train["labels"] == [label for _, label in splits.train.samples]
    assert checked_manifest(manifest, manifest["sha256"], Path("split.json")) == manifest
    assert split_manifest(build_splits(flat_cfg(flat_tree), seed=0)) == split_manifest(splits)


def test_digits_manifest_holds_indices_and_is_rebuilt_the_same() -> None:
    splits = build_splits(data_cfg("digits", classes=[5, 6]), seed=0)
    manifest = saved(splits)
    assert manifest["classes"] == ["5", "6"]
    assert len(manifest["splits"]["val"]["indices"]) == len(splits.val)
    again = build_splits(data_cfg("digits", classes=[5, 6]), seed=0, manifest=manifest)
    assert split_manifest(again) == split_manifest(splits)
    with pytest.raises(DataChanged, match="the train split rebuilt from the config is not"):
        build_splits(data_cfg("digits", classes=[5, 6]), seed=1, manifest=manifest)


def test_an_added_file_neither_reshuffles_nor_leaks_into_a_split(flat_tree: Path, caplog) -> None:
    before = build_splits(flat_cfg(flat_tree), seed=0)
    manifest = saved(before)
    Image.new("RGB", (16, 16), (9, 9, 9)).save(flat_tree / "x" / "added.png")
    reshuffled = build_splits(flat_cfg(flat_tree), seed=0)  # what a rebuild alone would do
    assert files_of(reshuffled.test) != files_of(before.test)
    with caplog.at_level(logging.WARNING):
        resumed = build_splits(flat_cfg(flat_tree), seed=0, manifest=manifest)
    for name in ("train", "val", "test"):
        assert files_of(getattr(resumed, name)) == files_of(getattr(before, name))
    assert "1 image file(s) added" in caplog.text and "x/added.png" in caplog.text
    assert "left out of every split" in caplog.text


def test_a_removed_or_changed_file_is_refused_naming_it(flat_tree: Path) -> None:
    splits = build_splits(flat_cfg(flat_tree), seed=0)
    manifest = saved(splits)
    changed = Path(files_of(splits.val)[0])
    Image.new("RGB", (40, 40), (1, 2, 3)).save(changed)
    name = str(changed.relative_to(flat_tree))
    with pytest.raises(DataChanged, match=rf"of the run's val split .* changed .*{name}"):
        build_splits(flat_cfg(flat_tree), seed=0, manifest=manifest)
    gone = Path(files_of(splits.train)[3])
    gone.unlink()
    name = str(gone.relative_to(flat_tree))
    with pytest.raises(
        DataChanged, match=rf"1 file\(s\) of the run's train split are gone .*{name}"
    ):
        build_splits(flat_cfg(flat_tree), seed=0, manifest=manifest)


def test_swapped_or_renamed_classes_are_refused(flat_tree: Path) -> None:
    manifest = saved(build_splits(flat_cfg(flat_tree), seed=0))
    swapped = OmegaConf.merge(flat_cfg(flat_tree), {"classes": ["y", "x"]})
    with pytest.raises(
        DataChanged, match=r"\['y', 'x'\] are not the run's \['x', 'y'\] \(the same"
    ):
        build_splits(swapped, seed=0, manifest=manifest)
    (flat_tree / "y").rename(flat_tree / "z")
    with pytest.raises(DataChanged, match=r"\['x', 'z'\] are not the run's .* \(other names"):
        build_splits(flat_cfg(flat_tree), seed=0, manifest=manifest)


def test_split_folders_swapped_on_disk_are_refused(tmp_path: Path, make_image_tree) -> None:
    """Same class names, same file names, but a's images now in b/: their sizes tell."""
    root = tmp_path / "tree"
    make_image_tree(root, {"train": 4, "val": 2}, ("a", "b"))
    for name, side in (("a", 8), ("b", 16)):  # each class its own file sizes
        for path in (root / "train" / name).glob("*.png"):
            noise = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
            Image.fromarray(noise).save(path)
    manifest = saved(build_splits(data_cfg("image_folder", root=str(root)), seed=0))
    (root / "train" / "a").rename(root / "train" / "tmp")
    (root / "train" / "b").rename(root / "train" / "a")
    (root / "train" / "tmp").rename(root / "train" / "b")
    with pytest.raises(DataChanged, match=r"train split under .* changed since the run"):
        build_splits(data_cfg("image_folder", root=str(root)), seed=0, manifest=manifest)


def test_a_damaged_or_foreign_split_json_is_refused(flat_tree: Path) -> None:
    manifest = saved(build_splits(flat_cfg(flat_tree), seed=0))
    with pytest.raises(DataChanged, match="split.json is not the split of this checkpoint"):
        checked_manifest(manifest, "0" * 64, Path("run/split.json"))
    edited = json.loads(json.dumps(manifest))
    edited["splits"]["test"]["files"][0], edited["splits"]["train"]["files"][0] = (
        edited["splits"]["train"]["files"][0],
        edited["splits"]["test"]["files"][0],
    )
    for damaged in (edited, {}, {"splits": 3}):
        with pytest.raises(DataChanged, match="split.json is damaged or was edited"):
            checked_manifest(damaged, manifest["sha256"], Path("run/split.json"))
    with pytest.raises(DataChanged, match="split.json is missing"):
        checked_manifest(None, manifest["sha256"], Path("run/split.json"))


def test_multi_label_rows_are_recorded_and_followed() -> None:
    splits = build_splits(data_cfg("digits_multilabel"), seed=0)
    manifest = saved(splits)
    first = manifest["splits"]["train"]["labels"][0]
    assert isinstance(first, list) and len(first) == len(manifest["classes"])
    again = build_splits(data_cfg("digits_multilabel"), seed=0, manifest=manifest)
    assert split_manifest(again) == split_manifest(splits)
