"""k-fold splits (data/splits.py), data=image_table (data/tables.py), fold statistics (sweep)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

from finetune.data import build_splits
from finetune.safety.errors import FinetuneError
from finetune.sweep.folds import fold_summary, fold_table

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def data_cfg(name: str, **overrides) -> DictConfig:
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml"), overrides)


def ids(dataset) -> set[bytes]:
    """Digits images as bytes: identities across splits built separately."""
    return {image.numpy().tobytes() for image in dataset.images}


def test_five_folds_cover_the_pool_once_and_keep_the_test_split() -> None:
    folds = [build_splits(data_cfg("digits", folds=5, fold=i), seed=0) for i in range(5)]
    vals = [ids(split.val) for split in folds]
    tests = [ids(split.test) for split in folds]
    assert all(t == tests[0] for t in tests)  # the same test split for every fold
    assert sum(len(v) for v in vals) == len(set().union(*vals))  # disjoint validation folds
    for split, val in zip(folds, vals, strict=True):
        assert not val & ids(split.train) and not val & tests[0]
        assert len(split.train) + len(split.val) + len(split.test) == 1797
        val_counts = np.bincount(split.val.labels.numpy())
        pool_counts = val_counts + np.bincount(split.train.labels.numpy())
        assert np.abs(val_counts - pool_counts / 5).max() <= 1  # stratified


def test_plain_split_is_unchanged_without_folds() -> None:
    plain = build_splits(data_cfg("digits"), seed=0)
    assert (len(plain.train), len(plain.val), len(plain.test)) == (1257, 270, 270)


@pytest.mark.parametrize(
    ("folds", "fold", "named"),
    [(None, 2, "data.fold=2 needs data.folds"), (1, 0, "data.folds=1"), (5, 5, "data.fold=5")],
)
def test_bad_folds_are_named(folds: object, fold: int, named: str) -> None:
    with pytest.raises(FinetuneError, match=named):
        build_splits(data_cfg("digits", folds=folds, fold=fold), seed=0)


def write_table(tmp_path: Path, rows: list[str], header: str = "file,label") -> Path:
    table = tmp_path / "images.csv"
    table.write_text("\n".join([header, *rows]) + "\n")
    return table


def test_image_table_relative_to_the_table_and_split_by_fraction(
    tmp_path: Path, make_image_tree
) -> None:
    make_image_tree(tmp_path / "pics", {"": 10}, ("cat", "dog"))
    rows = [f"pics/{c}/{i}.png,{c}" for c in ("cat", "dog") for i in range(10)]
    table = write_table(tmp_path, rows)
    splits = build_splits(data_cfg("image_table", path=str(table)), seed=0)
    assert splits.class_names == ["cat", "dog"] and splits.kind == "pil"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 2, 2)
    image, label = splits.train.samples[0]
    assert Path(image).is_file() and label in (0, 1)


def test_image_table_split_column_and_data_root(tmp_path: Path, make_image_tree) -> None:
    root = make_image_tree(tmp_path / "pics", {"": 4}, ("cat", "dog"))
    rows = [
        f"{c}/{i}.png,{c},{'train' if i < 3 else 'val'}" for c in ("cat", "dog") for i in range(4)
    ]
    (tmp_path / "elsewhere").mkdir()
    table = write_table(tmp_path / "elsewhere", rows, "file,label,split")
    splits = build_splits(data_cfg("image_table", path=str(table), root=str(root)), seed=0)
    assert (len(splits.train), len(splits.val)) == (6, 2)
    assert splits.test_source.startswith("val")


def test_image_table_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FinetuneError, match="has no column label"):
        build_splits(data_cfg("image_table", path=str(write_table(tmp_path, [], "file,y"))), 0)
    table = write_table(tmp_path, ["missing.png,cat", "missing2.png,dog"])
    with pytest.raises(FinetuneError, match="2 files of data.path=.* do not exist"):
        build_splits(data_cfg("image_table", path=str(table)), seed=0)


def test_fold_statistics_group_jobs_by_their_other_overrides() -> None:
    def row(fold: int, lr: str, best: float, status: str = "completed") -> dict:
        overrides = f"data.folds=3 data.fold={fold} optimizer.lr={lr}"
        return {"overrides": overrides, "status": status, "best": best, "test": best - 0.1}

    rows = [row(0, "0.1", 0.8), row(1, "0.1", 0.9), row(2, "0.1", 1.0, "early_stopped")]
    rows += [row(0, "0.01", 0.5), row(1, "0.01", 0.7, "failed")]
    records = {r["setting"]: r for r in fold_summary(rows, ("completed", "early_stopped"))}
    high = records["data.folds=3 optimizer.lr=0.1"]
    assert (high["folds"], high["finished"]) == (3, 3)
    assert high["best_mean"] == pytest.approx(0.9) and high["best_std"] == pytest.approx(0.1)
    assert high["test_mean"] == pytest.approx(0.8)
    low = records["data.folds=3 optimizer.lr=0.01"]
    assert (low["finished"], low["best_mean"], low["best_std"]) == (1, 0.5, None)
    assert "0.9000 ± 0.1000" in fold_table(list(records.values()), "val/acc")
    assert fold_summary([{"overrides": "seed=1", "status": "completed"}], ("completed",)) == []
