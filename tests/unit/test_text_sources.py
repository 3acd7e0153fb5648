"""Text sources beyond CSV and JSON lines: a parquet table (data=text_table), and data=hf_dataset
through the `datasets` library (a save_to_disk folder, local parquet files by load_dataset), and
the one-line refusal of a hub id that the offline machine does not have. No network: the hub is
offline (conftest) and every file is written here."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from finetune.data.hf_datasets import hf_dataset_splits
from finetune.data.text import text_table_splits
from finetune.safety.errors import FinetuneError

CONF = Path(__file__).resolve().parents[2] / "conf"
ROWS = {
    "text": [f"review {i} is {'good' if i % 2 else 'bad'}" for i in range(40)],
    "label": [i % 2 for i in range(40)],
}


@pytest.fixture(autouse=True)
def own_datasets_cache(tmp_path, monkeypatch):
    """load_dataset writes its Arrow cache under HF_DATASETS_CACHE: keep it in tmp_path."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")


def data_cfg(name: str, **changes: object):
    cfg = OmegaConf.load(CONF / "data" / f"{name}.yaml")
    cfg.cache_dir = None  # its ${paths.cache_dir} is the run config's
    return OmegaConf.merge(cfg, changes)


def write_parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(ROWS), path)
    return path


def test_a_parquet_table_reads_like_a_csv(tmp_path):
    path = write_parquet(tmp_path / "t.parquet")
    splits = text_table_splits(data_cfg("text_table", path=str(path)), 0)
    assert splits.class_names == ["0", "1"]
    assert [len(splits.train), len(splits.val), len(splits.test)] == [32, 4, 4]
    assert set(splits.train.texts) < set(ROWS["text"])


def test_a_file_that_is_not_parquet_is_one_line(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_text("text,label\nnot,parquet\n")
    with pytest.raises(FinetuneError, match=r"t.parquet is not a readable table"):
        text_table_splits(data_cfg("text_table", path=str(path)), 0)


def test_a_save_to_disk_folder_gives_class_label_names_and_its_own_splits(tmp_path):
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    train = datasets.Dataset.from_dict(ROWS, features=features)
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": train, "validation": train.select(range(10))}).save_to_disk(
        str(folder)
    )
    drawn = hf_dataset_splits(data_cfg("hf_dataset", dataset=str(folder)), 0)
    assert drawn.class_names == ["neg", "pos"] and len(drawn.train) == 32
    named = hf_dataset_splits(
        data_cfg("hf_dataset", dataset=str(folder), split_map={"val": "validation"}), 0
    )
    assert [len(named.train), len(named.val), len(named.test)] == [40, 10, 10]
    assert named.test_source == "val (validation)"
    assert named.val.texts == ROWS["text"][:10]
    val_drawn = hf_dataset_splits(
        data_cfg("hf_dataset", dataset=str(folder), split_map={"test": "validation"}), 0
    )
    assert [len(val_drawn.train), len(val_drawn.val), len(val_drawn.test)] == [36, 4, 10]
    assert val_drawn.test_source == "test" and val_drawn.test.texts == ROWS["text"][:10]
    with pytest.raises(FinetuneError, match=r"split_map.test=test is not a split.*'validation'"):
        hf_dataset_splits(
            data_cfg("hf_dataset", dataset=str(folder), split_map={"test": "test"}), 0
        )


def test_local_parquet_files_load_through_load_dataset(tmp_path):
    path = write_parquet(tmp_path / "t.parquet")
    cfg = data_cfg("hf_dataset", dataset="parquet", data_files=str(path))
    splits = hf_dataset_splits(cfg, 0)
    assert splits.class_names == ["0", "1"] and len(splits.train) == 32
    with pytest.raises(FinetuneError, match=r"no column 'sentence'; its columns are \['text'"):
        hf_dataset_splits(OmegaConf.merge(cfg, {"text_column": "sentence"}), 0)


def test_an_uncached_hub_id_offline_fails_at_once_naming_it_and_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FinetuneError) as refused:
        hf_dataset_splits(data_cfg("hf_dataset", dataset="someone/no-such-reviews"), 0)
    line = str(refused.value)
    assert "\n" not in line and "data.dataset=someone/no-such-reviews" in line
    assert "HF_HUB_OFFLINE" in line and "save_to_disk" in line
