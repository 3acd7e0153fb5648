"""After training: the run's report, and predict.py on new files, checked against eval.py.

Two tiny runs are shared by all tests: digits (the default data) and an image-folder tree
with train/val/test. predict on the image folder's test files must give exactly eval.py's
numbers on the same files; the report's confusion matrix must give the run's test metrics.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, run_script, write_image_tree
from PIL import Image

TINY = (
    "model=test_resnet",
    "data.image_size=16",
    "trainer.epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.progress_bar=false",
    "logger=csv",
)
CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, train_in) -> Path:
    result = train_in(tmp_path_factory.mktemp("digits"), *TINY)
    assert result.returncode == 0, result.output[-2000:]
    return result.run_dir


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree") / "images"
    return write_image_tree(root, {"train": 8, "val": 4, "test": 5}, CLASSES)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, train_in, image_root) -> Path:
    overrides = (*TINY, "data=image_folder", f"data.root={image_root}", "data.num_workers=0",
                 "data.image_size=16", "data.batch_size=8")  # fmt: skip
    result = train_in(tmp_path_factory.mktemp("folder"), *overrides)
    assert result.returncode == 0, result.output[-2000:]
    return result.run_dir


def read_confusion(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=int)


def confusion_of_csv(path: Path, classes: list[str]) -> np.ndarray:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    counts = np.zeros((len(classes), len(classes)), dtype=int)
    for row in rows:
        counts[classes.index(row["true"]), classes.index(row["label_1"])] += 1
    return counts


def test_report_agrees_with_the_run_test_metrics(digits_run):
    summary = json.loads((digits_run / "summary.json").read_text())
    report = digits_run / "report"
    assert summary["report"] == str(report / "index.html")
    counts = read_confusion(report / "confusion.csv")
    assert np.trace(counts) / counts.sum() == pytest.approx(summary["test"]["test/acc"], abs=1e-6)
    with open(report / "per_class.csv") as handle:
        f1 = [float(row["f1"]) for row in csv.DictReader(handle)]
    assert np.mean(f1) == pytest.approx(summary["test"]["test/f1"], abs=1e-4)
    calibration = json.loads((report / "calibration.json").read_text())
    assert calibration["temperature"] > 0 and calibration["fitted_on"] == "val"
    for name in ("confusion.png", "reliability.png", "top_losses.png", "top_losses.csv"):
        assert (report / name).stat().st_size > 0


@pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is not installed (apt-get install -y chromium): the page is not opened",
)
def test_report_page_renders_in_a_headless_browser(digits_run, tmp_path):
    shot = tmp_path / "shot.png"
    page = (digits_run / "report" / "index.html").resolve().as_uri()
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400",
         f"--screenshot={shot}", page],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 20  # text, plots and pictures, not one blank colour
    assert (pixels < 128).mean() > 0.01  # dark pixels: something was drawn on the white page


def test_predict_on_the_digits_test_files_matches_the_report(digits_run, tmp_path):
    """The digits test split saved as PNGs (17 grey levels quantised to 8 bits: at most a
    near-tie may flip) gives the report's confusion matrix."""
    from omegaconf import OmegaConf

    from finetune.data import build_splits

    cfg = OmegaConf.load(REPO_ROOT / "conf" / "data" / "digits.yaml")
    splits = build_splits(cfg, 42)
    for i in range(len(splits.test)):
        label = splits.class_names[int(splits.test.labels[i])]
        folder = tmp_path / "digits" / label
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (splits.test.images[i, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    out = tmp_path / "out"
    result = run_script(
        "predict.py", f"ckpt={digits_run}", f"input={tmp_path / 'digits'}", f"out={out}",
        "predict.progress_bar=false", base=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    expected = read_confusion(digits_run / "report" / "confusion.csv")
    got = confusion_of_csv(out / "predictions.csv", splits.class_names)
    assert got.sum() == expected.sum() == len(splits.test)
    assert np.abs(got - expected).sum() <= 2
    assert Image.open(out / "contact_sheet.png").size[0] > 0


def test_predict_on_a_folder_matches_eval_on_the_same_files(folder_run, image_root, tmp_path):
    out = tmp_path / "out"
    predicted = run_script(
        "predict.py", f"ckpt={folder_run}", f"input={image_root / 'test'}", f"out={out}",
        "predict.top_k=2", base=tmp_path,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stdout[-2000:] + predicted.stderr[-2000:]
    evaluated = run_script(
        "eval.py", f"ckpt={folder_run}", "data=image_folder", f"data.root={image_root}",
        "data.num_workers=0", base=tmp_path,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-2000:]
    metrics = json.loads((folder_run / "checkpoints/best.eval-test.json").read_text())["metrics"]
    counts = confusion_of_csv(out / "predictions.csv", list(CLASSES))
    assert counts.sum() == 15
    assert np.trace(counts) / 15 == pytest.approx(metrics["test/acc"], abs=1e-6)
    eval_report = folder_run / "checkpoints" / "best.report-test"
    assert (read_confusion(eval_report / "confusion.csv") == counts).all()
    assert (eval_report / "index.html").is_file()
    with open(out / "predictions.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["file", "label_1", "prob_1", "label_2", "prob_2", "true", "correct"]
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size[0] >= 8 * 128  # 15 tiles, 8 to a row


def test_predictions_are_reproducible_and_unreadable_files_are_listed(
    folder_run, image_root, tmp_path
):
    import finetune

    inputs = tmp_path / "inputs"
    shutil.copytree(image_root / "test", inputs)
    (inputs / "b" / "broken.png").write_bytes(b"not a png")
    first = finetune.predict(str(folder_run), str(inputs), out=str(tmp_path / "one"))
    second = finetune.predict(str(folder_run), str(inputs), out=str(tmp_path / "two"))
    assert len(first.rows) == 15 and second.rows == first.rows
    assert [item["file"] for item in first.unreadable] == ["b/broken.png"]
    one, two = (tmp_path / name / "predictions.csv" for name in ("one", "two"))
    assert one.read_bytes() == two.read_bytes()
    assert (tmp_path / "one" / "unreadable.csv").read_text().startswith("file,error\nb/broken.png,")


def test_temperature_and_flip_change_probabilities_not_files(folder_run, image_root):
    import finetune

    plain = finetune.predict(str(folder_run), str(image_root / "test"), progress_bar=False)
    scaled = finetune.predict(str(folder_run), str(image_root / "test"), temperature="auto")
    flipped = finetune.predict(str(folder_run), str(image_root / "test"), tta="flip")
    assert [r["label_1"] for r in scaled.rows] == [r["label_1"] for r in plain.rows]
    assert [r["prob_1"] for r in scaled.rows] != [r["prob_1"] for r in plain.rows]
    assert [r["prob_1"] for r in flipped.rows] != [r["prob_1"] for r in plain.rows]
    assert plain.files == {}  # a notebook call without out= writes nothing


def test_onnx_backend_matches_torch(folder_run, image_root, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    import finetune

    exported = run_script(
        "scripts/export.py", str(folder_run), "--out", str(tmp_path), "--formats", "onnx",
        base=tmp_path,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stdout + exported.stderr
    torch_rows = finetune.predict(str(folder_run), str(image_root / "test")).rows
    onnx_rows = finetune.predict(
        str(folder_run), str(image_root / "test"), backend="onnx", onnx=str(tmp_path / "model.onnx")
    ).rows
    assert [r["label_1"] for r in onnx_rows] == [r["label_1"] for r in torch_rows]


def test_a_bad_predict_option_is_one_line(tmp_path):
    result = run_script(
        "predict.py", f"ckpt={tmp_path}", f"input={tmp_path}", "predict.tta=rotate", base=tmp_path
    )
    assert result.returncode == 2
    assert "predict.tta=rotate must be one of none, flip" in result.stdout + result.stderr
