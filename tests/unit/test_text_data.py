"""Text tables: each bad input is one clear line naming the bad value and the fix; good ones
split stratified with their pair column; the generated default is what its labels say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from finetune.data.text import text_table_splits
from finetune.safety.errors import FinetuneError

CONF = Path(__file__).resolve().parents[2] / "conf"


def table_cfg(path: Path, **changes: object):
    cfg = OmegaConf.load(CONF / "data" / "text_table.yaml")
    return OmegaConf.merge(cfg, {"path": str(path), **changes})


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def reviews(n: int = 20) -> list[str]:
    return [
        f"review number {i} is {'good' if i % 2 else 'bad'},{'pos' if i % 2 else 'neg'}"
        for i in range(n)
    ]


def test_a_missing_column_names_the_columns_that_exist(tmp_path):
    path = write_csv(tmp_path / "t.csv", "sentence,label", reviews())
    with pytest.raises(FinetuneError, match=r"no column 'text'.*\['sentence', 'label'\]"):
        text_table_splits(table_cfg(path), 0)


def test_empty_texts_are_refused_with_their_row(tmp_path):
    path = write_csv(tmp_path / "t.csv", "text,label", [*reviews(), " ,pos"])
    with pytest.raises(FinetuneError, match=r"data.text_column has 1 empty text.*row 21"):
        text_table_splits(table_cfg(path), 0)


def test_labels_all_of_one_class_are_refused(tmp_path):
    path = write_csv(tmp_path / "t.csv", "text,label", [f"text {i},pos" for i in range(10)])
    with pytest.raises(FinetuneError, match=r"every label .* is 'pos'.*at least 2 classes"):
        text_table_splits(table_cfg(path), 0)


def test_a_file_that_is_not_a_table_is_refused(tmp_path):
    binary = tmp_path / "t.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    with pytest.raises(FinetuneError, match="is not a readable table"):
        text_table_splits(table_cfg(binary), 0)
    other = tmp_path / "t.xlsx"
    other.write_text("x")
    with pytest.raises(
        FinetuneError, match=r"not a table this reads: use \.csv, \.tsv, \.jsonl or \.parquet"
    ):
        text_table_splits(table_cfg(other), 0)


def test_json_lines_with_a_pair_column_split_stratified(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [
        {"premise": f"a {i}", "hypothesis": f"b {i}", "label": "yes" if i % 2 else "no"}
        for i in range(40)
    ]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    cfg = table_cfg(
        path,
        text_column="premise",
        text_pair_column="hypothesis",
        val_fraction=0.25,
        test_fraction=0.25,
    )
    splits = text_table_splits(cfg, 0)
    assert splits.class_names == ["no", "yes"]
    assert [len(splits.train), len(splits.val), len(splits.test)] == [20, 10, 10]
    assert splits.val.labels.sum() == 5  # half of each split is "yes"
    assert splits.train.pairs[0].replace("b", "a") == splits.train.texts[0]


def test_a_tokenizer_bigger_than_the_models_vocabulary_is_refused():
    from finetune.models.hf_text import build_text, train_word_level

    model_cfg = OmegaConf.load(CONF / "model" / "tiny_bert.yaml")
    small = train_word_level(["a b c d e f g"], 100)
    big = train_word_level([" ".join(f"word{i}" for i in range(300))], 1000)
    model, _ = build_text(model_cfg, 2, small)
    folder_cfg = OmegaConf.merge(model_cfg, {"pretrained": "false"})
    from finetune.models.hf_text import check_tokenizer_fits

    with pytest.raises(FinetuneError, match=r"has \d+ tokens but tiny embeds only \d+"):
        check_tokenizer_fits(model.model, big, folder_cfg)


def test_the_text_task_brings_a_text_model_and_data_and_no_image_augmentation(tmp_path):
    from conftest import compose_train

    from finetune.tasks.text import TextClassification

    cfg = compose_train(tmp_path, "task=text_classification")
    assert (cfg.model.source, cfg.data.name, cfg.augment.name) == (
        "hf_text",
        "synthetic_reviews",
        "none",
    )
    assert not TextClassification(cfg, ["neg", "pos"]).sees_images  # no augmented-image grid
