"""task=segmentation end to end on the embedded digit canvases: one tiny run trains, records
overlays and per-class IoU, resumes bitwise, evaluates to its own test metrics and exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_script


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_it_monitors_miou_and_records_per_class_iou(segmentation_run):
    summary = json.loads((segmentation_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["monitor"] == "val/miou"
    classes = ["background", *map(str, range(10))]
    expected = {"test/loss", "test/miou", "test/dice", "test/pixel_acc"}
    expected |= {f"test/iou_{c}" for c in classes}
    assert set(summary["test"]) == expected
    assert all(0.0 <= v <= 1.0 for k, v in summary["test"].items() if k != "test/loss")
    state = load(segmentation_run / "checkpoints/best.pt")
    assert state["config"]["task"]["_target_"] == "finetune.tasks.segmentation.Segmentation"
    assert state["config"]["model"]["source"] == "smp"


def test_tensorboard_shows_overlays_and_the_pixel_confusion_matrix(segmentation_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(segmentation_run / "tensorboard")).Reload()
    images = events.Tags()["images"]
    assert {"val/overlays", "val/confusion_matrix"} <= set(images)
    overlay = events.Images("val/overlays")[-1]
    # 4 rows of image | true | predicted, 32-pixel tiles with 2-pixel padding.
    assert (overlay.width, overlay.height) == (3 * 34 + 2, 4 * 34 + 2)


def test_it_resumes_bitwise(segmentation_run, run_train, tmp_path):
    """The run's epoch-1 checkpoint, resumed in a copy of the run, ends where the run ended."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(segmentation_run, copy)
    (saved,) = (copy / "checkpoints").glob("epoch=001-*.pt")
    epoch_one = shutil.copy(saved, copy / "checkpoints/epoch1.pt")  # no '=' for Hydra to parse
    resumed = run_train(f"resume={epoch_one}", "trainer.epochs=2", run_dir=copy)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "epoch 2/2" in resumed.output and "epoch 1/2" not in resumed.output
    a = load(copy / "checkpoints/last.pt")
    b = load(segmentation_run / "checkpoints/last.pt")
    assert a["model_state_dict"].keys() == b["model_state_dict"].keys()
    assert all(torch.equal(a["model_state_dict"][k], v) for k, v in b["model_state_dict"].items())
    assert a["metrics"] == b["metrics"]


def test_eval_reproduces_the_test_metrics(segmentation_run, tmp_path):
    result = run_script("eval.py", f"ckpt={segmentation_run}", base=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((segmentation_run / "checkpoints/best.eval-test.json").read_text())
    trained = json.loads((segmentation_run / "summary.json").read_text())["test"]
    assert written["metrics"] == pytest.approx(trained, abs=1e-6)
    assert report_ious(segmentation_run / "checkpoints/best.report-test") == pytest.approx(
        {k: v for k, v in written["metrics"].items() if k.startswith("test/iou_")}, abs=1e-6
    )


def report_ious(report: Path) -> dict[str, float]:
    import csv

    with (report / "per_class.csv").open() as handle:
        return {f"test/iou_{row['class']}": float(row["iou"]) for row in csv.DictReader(handle)}


def test_the_report_shows_per_class_iou_confusion_and_the_worst_images(segmentation_run):
    """<run>/report/ after the test phase: its per-class IoU is the run's test/iou_<class>."""
    import csv

    report = segmentation_run / "report"
    trained = json.loads((segmentation_run / "summary.json").read_text())["test"]
    per_class = {k: v for k, v in trained.items() if k.startswith("test/iou_")}
    assert report_ious(report) == pytest.approx(per_class, abs=1e-6)
    with (report / "per_class.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["class", "iou", "precision", "recall", "f1", "support"]
    confusion = [line.split(",") for line in (report / "confusion.csv").read_text().splitlines()]
    assert confusion[0] == CLASSES
    assert [int(row["support"]) for row in rows] == [sum(map(int, r)) for r in confusion[1:]]
    with (report / "worst_images.csv").open() as handle:
        worst = [float(row["iou"]) for row in csv.DictReader(handle)]
    assert worst == sorted(worst) and len(worst) > 0
    page = (report / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # curves, confusion, worst images
    for name in ("confusion.png", "worst_images.png"):
        assert (report / name).stat().st_size > 0


def test_the_torchscript_export_matches_and_outputs_masks(segmentation_run, tmp_path):
    out = tmp_path / "x"
    result = run_script("scripts/export.py", str(segmentation_run), "--out", str(out),
                        "--formats", "torchscript", base=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    exported = torch.jit.load(str(out / "model.torchscript.pt"))
    assert exported(torch.rand(2, 3, 32, 32)).shape == (2, 11, 32, 32)


CLASSES = ["background", *map(str, range(10))]


@pytest.fixture(scope="module")
def canvas_folder(segmentation_run, tmp_path_factory) -> Path:
    """Six of the run's test canvases as PNG files (DIR/images, DIR/masks, as data=mask_folder
    reads them): the same images for eval's pass, predict and load_model."""
    import numpy as np
    from omegaconf import OmegaConf
    from PIL import Image

    from finetune.data import build_splits

    cfg = OmegaConf.create(load(segmentation_run / "checkpoints/best.pt")["config"])
    test = build_splits(cfg.data, cfg.seed).test
    root = tmp_path_factory.mktemp("canvases")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i in range(6):
        image, mask = test.load(i)
        pixels = (image * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(root / "images" / f"{i}.png")
        Image.fromarray(mask.numpy().astype(np.uint8)).save(root / "masks" / f"{i}.png")
    return root


def eval_pass_masks(run: Path, root: Path) -> torch.Tensor:
    """The predicted masks of eval's pass (engine/report.py: split_outputs) on `root`'s images,
    read as data=mask_folder reads them, in file order."""
    from omegaconf import OmegaConf

    from finetune.data.loaders import transforms_for
    from finetune.data.mask_folder import files_set, read_pairs
    from finetune.engine.evaluation import model_from_checkpoint
    from finetune.engine.report import split_outputs

    best = run / "checkpoints/best.pt"
    model, prep, cfg = model_from_checkpoint(load(best), str(best))
    folder_cfg = OmegaConf.merge(cfg.data, {"class_names": CLASSES, "palette": None})
    dataset = files_set(read_pairs(root, folder_cfg), root, len(CLASSES))
    dataset.transform = transforms_for("mask", prep, augment=False)[1]
    logits, _, _ = split_outputs(model, dataset, cfg.data, torch.device("cpu"), None)
    return logits.argmax(dim=1)


def read_mask(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as mask:
        assert mask.mode == "P"
        return torch.from_numpy(np.asarray(mask).astype(np.int64))


def test_predict_and_load_model_give_eval_s_masks(segmentation_run, canvas_folder, tmp_path):
    from PIL import Image

    import finetune

    expected = eval_pass_masks(segmentation_run, canvas_folder)
    assert expected.unique().numel() > 1  # not a blank model: the comparison means something
    result = finetune.predict(segmentation_run, canvas_folder / "images", out=tmp_path, tta="none")
    assert [row["file"] for row in result.rows] == [f"{i}.png" for i in range(6)]
    for i in range(6):
        assert torch.equal(read_mask(tmp_path / "masks" / f"{i}.png"), expected[i]), i
    model, transform, classes = finetune.load_model(segmentation_run)
    assert classes == CLASSES
    for i in range(6):
        with Image.open(canvas_folder / "images" / f"{i}.png") as image:
            logits = model(transform(image).unsqueeze(0))
        assert torch.equal(logits.argmax(dim=1)[0], expected[i]), i


def test_predict_writes_masks_overlays_and_a_sheet_byte_for_byte(
    segmentation_run, canvas_folder, tmp_path
):
    """Masks and overlays have their input's size (an input of another size too), and the same
    input gives the same files: predict.py's, and finetune.predict's in another process."""
    import shutil

    from PIL import Image

    import finetune

    inputs = tmp_path / "in"
    shutil.copytree(canvas_folder / "images", inputs)
    with Image.open(inputs / "0.png") as image:
        image.resize((48, 40)).save(inputs / "wide.png")
    result = run_script("predict.py", f"ckpt={segmentation_run}", f"input={inputs}",
                        f"out={tmp_path / 'a'}", base=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    finetune.predict(segmentation_run, inputs, out=tmp_path / "b")
    written = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    names = [*map(str, range(6)), "wide"]
    assert written == sorted(
        [Path("contact_sheet.png")]
        + [Path(kind) / f"{name}.png" for kind in ("masks", "overlays") for name in names]
    )
    for kind in ("masks", "overlays"):
        with Image.open(tmp_path / "a" / kind / "wide.png") as picture:
            assert picture.size == (48, 40)
    assert read_mask(tmp_path / "a/masks/0.png").max() < len(CLASSES)
    for path in [*written, Path("predictions.csv")]:
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes(), path


def test_flip_tta_mirrors_the_mask_back(segmentation_run, canvas_folder, tmp_path):
    """With predict.tta=flip, the mask of a mirrored image is the mirrored mask of the image."""
    from PIL import Image, ImageOps

    import finetune

    inputs = tmp_path / "in"
    inputs.mkdir()
    with Image.open(canvas_folder / "images/1.png") as image:
        image.save(inputs / "a.png")
        ImageOps.mirror(image).save(inputs / "b.png")
    finetune.predict(segmentation_run, inputs, out=tmp_path / "out", tta="flip")
    mask, mirrored = (read_mask(tmp_path / "out/masks" / name) for name in ("a.png", "b.png"))
    assert torch.equal(mirrored, mask.flip(-1))


def test_a_later_predict_into_the_same_folder_removes_the_earlier_inputs_masks(
    segmentation_run, canvas_folder, tmp_path
):
    """masks/ matches predictions.csv after a second predict on fewer inputs; files that no
    predict wrote (a user's own, here masks/mine.png) stay."""
    import shutil

    import finetune

    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for name in ("1.png", "4.png"):
        shutil.copy(canvas_folder / "images" / name, fewer / name)
    out = tmp_path / "out"
    finetune.predict(segmentation_run, canvas_folder / "images", out=out)
    shutil.copy(out / "masks/0.png", out / "masks/mine.png")
    result = finetune.predict(segmentation_run, fewer, out=out)
    assert [row["file"] for row in result.rows] == ["1.png", "4.png"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["1.png", "4.png", "mine.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["1.png", "4.png"]
