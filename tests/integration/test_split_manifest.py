"""The data behind a result: split.json is written, followed on resume and by eval.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, train_env
from PIL import Image

CLASSES = ("a", "b", "c")


def tiny(tree: Path) -> tuple[str, ...]:
    """test_resnet on a flat folder of 3 x 10 images, split 60/20/20 by fraction."""
    return (
        "model=test_resnet",
        "model.pretrained=false",
        "data=image_folder",
        f"data.root={tree}",
        "data.image_size=16",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
        "trainer.progress_bar=false",
        "logger=csv",
    )


def one_line_error(output: str) -> list[str]:
    return [line for line in output.splitlines() if "Error: " in line]


def run_eval(base: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "eval.py", *args],
        cwd=REPO_ROOT,
        env=train_env(base),
        capture_output=True,
        text=True,
        timeout=300,
    )


def add_image(tree: Path) -> None:
    Image.new("RGB", (16, 16), (200, 10, 10)).save(tree / "a" / "added.png")


def test_split_json_is_written_and_its_hash_is_in_the_checkpoint(
    tmp_path, make_image_tree, run_train
) -> None:
    tree = make_image_tree(tmp_path / "tree", {"": 10}, CLASSES)
    result = run_train(*tiny(tree), "trainer.epochs=1")
    assert result.returncode == 0, result.output[-3000:]
    manifest = json.loads((result.run_dir / "split.json").read_text())
    assert manifest["classes"] == list(CLASSES)
    sizes = {name: split["size"] for name, split in manifest["splits"].items()}
    assert sizes == {"train": 18, "val": 6, "test": 6}
    every_file = [f for split in manifest["splits"].values() for f in split["files"]]
    assert sorted(every_file) == sorted(str(p.relative_to(tree)) for p in tree.rglob("*.png"))
    for name in ("last.pt", "best.pt"):
        state = torch.load(result.run_dir / "checkpoints" / name, weights_only=True)
        assert state["split_sha256"] == manifest["sha256"]


def test_resume_keeps_its_split_when_a_file_is_added_and_refuses_a_removed_one(
    tmp_path, make_image_tree, run_train
) -> None:
    tree = make_image_tree(tmp_path / "tree", {"": 10}, CLASSES)
    first = run_train(*tiny(tree), "trainer.epochs=1")
    assert first.returncode == 0, first.output[-3000:]
    split_json = (first.run_dir / "split.json").read_text()
    add_image(tree)
    resumed = run_train(f"resume={first.run_dir}", "trainer.epochs=2", run_dir=first.run_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "1 image file(s) added" in resumed.output and "a/added.png" in resumed.output
    assert (first.run_dir / "split.json").read_text() == split_json
    facts = json.loads((first.run_dir / "summary.json").read_text())
    assert facts["status"] == "completed" and facts["epochs_done"] == 2

    removed = sorted(tree.rglob("*.png"))[0]
    removed.unlink()
    refused = run_train(f"resume={first.run_dir}", "trainer.epochs=3", run_dir=first.run_dir)
    assert refused.returncode == 2, refused.output[-3000:]
    errors = one_line_error(refused.output)
    assert len(errors) == 1 and str(removed.relative_to(tree)) in errors[0], refused.output[-3000:]
    assert "are gone from" in errors[0] and "start a new run" in errors[0]


@pytest.fixture(scope="module")
def run_with_added_file(tmp_path_factory, make_image_tree_module, train_in):
    """A finished 1-epoch run whose data folder gained an image afterwards."""
    base = tmp_path_factory.mktemp("split_eval")
    tree = make_image_tree_module(base / "tree", {"": 10}, CLASSES)
    result = train_in(base, *tiny(tree), "trainer.epochs=1")
    assert result.returncode == 0, result.output[-3000:]
    add_image(tree)
    return result.run_dir, tree


@pytest.fixture(scope="module")
def make_image_tree_module():
    from conftest import write_image_tree

    return write_image_tree


def test_eval_follows_the_runs_split_despite_an_added_file(run_with_added_file, tmp_path):
    run_dir, _ = run_with_added_file
    result = run_eval(tmp_path, f"ckpt={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((run_dir / "checkpoints/best.eval-test.json").read_text())
    trained = json.loads((run_dir / "summary.json").read_text())["test"]
    assert written["metrics"] == pytest.approx(trained, abs=1e-6)
    assert "a/added.png" in result.stdout + result.stderr  # named as left out


def test_eval_of_a_checkpoint_out_of_its_run_refuses_changed_data(run_with_added_file, tmp_path):
    run_dir, _ = run_with_added_file
    loose = tmp_path / "best.pt"
    shutil.copy(run_dir / "checkpoints" / "best.pt", loose)
    result = run_eval(tmp_path, f"ckpt={loose}")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = one_line_error(result.stdout + result.stderr)
    assert len(errors) == 1 and "the run's data changed since training" in errors[0]


def test_eval_on_other_data_refuses_swapped_class_names(run_with_added_file, tmp_path):
    run_dir, tree = run_with_added_file
    other = ("data=image_folder", f"data.root={tree}", "data.image_size=16", "data.num_workers=0")
    result = run_eval(tmp_path, f"ckpt={run_dir}", *other, "data.classes=[b,a,c]")
    assert result.returncode == 2, result.stderr[-3000:]
    errors = one_line_error(result.stdout + result.stderr)
    assert len(errors) == 1 and "the same names in another order" in errors[0]
    assert "data.classes=['a', 'b', 'c']" in errors[0]
    allowed = run_eval(tmp_path, f"ckpt={run_dir}", *other)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
