"""predict's inputs (image, folder, glob, table) and its rows."""

from __future__ import annotations

import pytest
import torch

from finetune.data.inputs import gather_inputs
from finetune.records.prediction_files import add_truth, rows_csv
from finetune.safety.errors import FinetuneError

CLASSES = ["a", "b", "c"]


def test_a_class_folder_tree_is_labelled_in_sorted_order(image_tree):
    inputs = gather_inputs(str(image_tree / "val"), CLASSES)
    assert inputs.labelled
    assert inputs.names == sorted(inputs.names) and inputs.names[0] == "a/0.png"
    assert inputs.truths[:4] == ["a"] * 4 and inputs.truths[-1] == "c"


def test_a_folder_of_other_names_is_unlabelled(image_tree):
    inputs = gather_inputs(str(image_tree), CLASSES)  # train/a/0.png: parents are classes
    assert inputs.labelled
    unlabelled = gather_inputs(str(image_tree / "val"), ["x", "y"])
    assert not unlabelled.labelled and unlabelled.truths[0] is None


def test_an_image_a_glob_and_a_table(image_tree, tmp_path):
    one = gather_inputs(str(image_tree / "val/b/1.png"), CLASSES)
    assert one.names == ["1.png"] and not one.labelled
    globbed = gather_inputs(str(image_tree / "val/*/0.png"), CLASSES)
    assert len(globbed.files) == 3 and globbed.truths == ["a", "b", "c"]
    table = tmp_path / "images" / "list.csv"
    table.write_text("file,label\nval/c/2.png,c\nval/a/3.png,\n")
    rows = gather_inputs(str(table), CLASSES)
    assert rows.names == ["val/c/2.png", "val/a/3.png"] and rows.truths == ["c", None]
    assert rows.files[0].is_file()


@pytest.mark.parametrize(
    "spec, message",
    [("nowhere/*.png", "holds no image files"), ("nowhere", "not an image, a folder")],
)
def test_inputs_that_match_nothing_are_named(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FinetuneError, match=message):
        gather_inputs(spec, CLASSES)


def test_a_table_with_unknown_labels_is_refused(tmp_path):
    table = tmp_path / "list.csv"
    table.write_text("file,label\nx.png,zebra\n")
    with pytest.raises(FinetuneError, match="zebra"):
        gather_inputs(str(table), CLASSES)


def test_rows_have_top_k_labels_and_truth():
    from omegaconf import OmegaConf

    from finetune.tasks.classification import Classification

    task = Classification(OmegaConf.create({}), CLASSES)
    probs = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]])
    rows = task.prediction_rows(["x.png", "y.png"], probs, top_k=5)
    add_truth(rows, ["b", "c"])
    assert rows[0] == {
        "file": "x.png", "label_1": "b", "prob_1": 0.7, "label_2": "c", "prob_2": 0.2,
        "label_3": "a", "prob_3": 0.1, "true": "b", "correct": 1,
    }  # fmt: skip
    assert rows[1]["correct"] == 0
    text = rows_csv(rows, list(rows[0])).decode()
    assert text.splitlines()[0] == "file,label_1,prob_1,label_2,prob_2,label_3,prob_3,true,correct"


def test_an_earlier_predictions_table_names_only_files_inside_the_output_folder(tmp_path):
    """predictions.csv is read back as data: names that climb out or name nothing are dropped,
    and a name with '..' parts maps to a path inside masks/, never above it."""
    from finetune.records.prediction_masks import earlier_inputs, output_name

    table = "file,label\n..,a\n/,a\n../../etc/x.jpg,b\nok.jpg,c\n"
    (tmp_path / "predictions.csv").write_text(table)
    names = earlier_inputs(tmp_path)
    assert names == {"../../etc/x.jpg", "ok.jpg"}
    assert {str(output_name(name)) for name in names} == {"etc/x.png", "ok.png"}
