"""Pictures: what a validation pass keeps, the labelled grid, the confusion matrix, and the
learning curves of scripts/plot_runs.py (read back as pixels, not just files)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from PIL import Image

from finetune.records.confusion_picture import blues, cell_size, confusion_picture
from finetune.records.curves import find_runs, plot_runs, run_labels
from finetune.records.predictions import Predictions
from finetune.records.visuals import (
    RIGHT,
    TILE,
    WRONG,
    confusion_counts,
    confusion_image,
    labelled_grid,
)
from finetune.safety.errors import FinetuneError
from finetune.tasks.classification import Classification

REPO_ROOT = Path(__file__).resolve().parents[2]
NAMES = ["cat", "dog", "bird"]


def collect(images: int, pr_classes: int, features: int, batches: int = 3) -> Predictions:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3).eval()
    task = Classification(OmegaConf.create({}), NAMES)
    kept = Predictions(
        model,
        NAMES,
        task.label_text,
        task.pictures,
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        images,
        pr_classes,
        features,
    )
    with torch.inference_mode():
        for _ in range(batches):
            x = torch.randn(4, 3, 32, 32)
            probs = task.probabilities(model(x))
            kept.update(x, torch.tensor([0, 1, 2, 0]), probs, task.decisions(probs))
    kept.close()
    return kept


def test_predictions_keep_only_what_was_asked() -> None:
    kept = collect(images=5, pr_classes=2, features=6)
    assert len(kept) == 12 and kept.targets.tolist()[:4] == [0, 1, 2, 0]
    assert kept.images.shape == (5, 3, 32, 32)
    assert kept.images.min() >= 0 and kept.images.max() <= 1  # de-normalised for display
    assert kept.probs.shape == (12, 2)
    assert kept.features.shape[0] == 6 and kept.sprites.shape == (6, 3, 32, 32)
    assert kept.example.shape == (1, 3, 32, 32) and not kept.example.is_inference()
    assert not kept.model.get_classifier()._forward_pre_hooks  # the hook is gone
    kept.close()  # twice is harmless


def test_nothing_asked_keeps_predictions_only() -> None:
    kept = collect(images=0, pr_classes=0, features=0)
    assert len(kept) == 12 and kept.images.shape[0] == 0
    assert kept.features is None and kept.example is None


def test_the_grid_labels_each_image_and_colours_mistakes() -> None:
    kept = collect(images=10, pr_classes=0, features=0)
    kept.preds = torch.tensor([0, 2] + [int(t) for t in kept.targets[2:]])  # the 2nd is wrong
    grid = labelled_grid(kept, 10, kept.label_text)
    assert grid.dtype == torch.float32 and grid.min() >= 0 and grid.max() <= 1
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(int)
    assert grid.shape[1] > 2 * TILE and grid.shape[2] == 8 * (TILE + 2) + 2  # 8 per row, 2 rows
    top_left_border = pixels[3, 2 + 1]  # padding 2, then the tile's 2-pixel border
    assert tuple(top_left_border) == RIGHT
    assert tuple(pixels[3, 2 + TILE + 2 + 1]) == WRONG


def test_the_confusion_matrix_counts_and_draws() -> None:
    counts = confusion_counts(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2]), 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    image = confusion_image(collect(images=0, pr_classes=0, features=0), epoch=3)
    assert image.shape[0] == 3 and image.shape[1] >= 150 and image.shape[2] >= 150


def test_the_confusion_picture_colours_each_cell_by_its_row_fraction() -> None:
    counts = np.array([[4, 0, 0], [1, 3, 0], [0, 2, 2]])
    picture = confusion_picture(counts, ["a", "b", "c"], "epoch 1")
    colours = Counter(map(tuple, (picture.permute(1, 2, 0).numpy() * 255).round().reshape(-1, 3)))
    cell_area = cell_size(3) ** 2
    for fraction, cells in ((1.0, 1), (0.75, 1), (0.5, 2), (0.25, 1), (0.0, 4)):
        colour = tuple(blues(np.array(fraction)).tolist())
        drawn = colours[colour]  # minus the pixels under each cell's count
        assert cells * cell_area * 0.8 <= drawn <= cells * cell_area + 50, (fraction, drawn)
    assert tuple(blues(np.array(1.0)).tolist()) == (8, 48, 107)


def write_run(path: Path, overrides: list[str], losses: list[float], accs: list[float]) -> Path:
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (path / ".hydra" / "config.yaml").write_text("monitor: val/acc\nmode: max\n")
    lines = ["epoch,step,train/loss,val/loss,val/acc,lr"]
    for epoch, (loss, acc) in enumerate(zip(losses, accs, strict=True), start=1):
        lines.append(f"{epoch},{epoch * 10},{loss},{loss + 0.1},{acc},0.001")
    (path / "metrics.csv").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A multirun directory with jobs 0, 1 and 10 (sorted as numbers, not as text)."""
    root = tmp_path / "multirun" / "2026-11-27" / "10-00-00"
    for shift, (job, lr) in enumerate((("0", "0.001"), ("1", "0.01"), ("10", "0.1"))):
        losses, accs = [2.0 - shift, 1.5 - shift / 2, 1.0], [0.2 * shift, 0.5, 0.9 - 0.2 * shift]
        write_run(root / job, ["model=test_resnet", f"optimizer.lr={lr}"], losses, accs)
    return root


def test_runs_are_found_in_a_multirun_and_labelled_by_what_differs(sweep: Path) -> None:
    runs = find_runs([sweep])
    assert [run.name for run in runs] == ["0", "1", "10"]
    assert run_labels(runs) == ["optimizer.lr=0.001", "optimizer.lr=0.01", "optimizer.lr=0.1"]
    assert run_labels(runs[:1]) == ["model=test_resnet optimizer.lr=0.001"]


def colour_pixels(png: Path, colour: tuple[int, int, int]) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(colour)).sum(axis=2) < 30).sum())


def test_the_curves_are_a_real_plot_with_one_line_per_run(sweep: Path, tmp_path: Path) -> None:
    png = plot_runs([sweep], tmp_path / "curves.png")
    image = Image.open(png)
    assert image.format == "PNG" and image.size == (1200, 480)
    # matplotlib's first three colours: one line per run, in both panels.
    for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):
        assert colour_pixels(png, colour) > 200
    assert colour_pixels(png, (214, 39, 40)) == 0  # no fourth run


def test_an_unknown_metric_or_an_empty_directory_is_an_error(sweep: Path, tmp_path: Path) -> None:
    with pytest.raises(FinetuneError, match="val/top1 is not in metrics.csv"):
        plot_runs([sweep], tmp_path / "x.png", "val/top1")
    with pytest.raises(FinetuneError, match=f"no metrics.csv in {tmp_path / 'empty'}"):
        plot_runs([tmp_path / "empty"], tmp_path / "x.png")


def test_the_script_writes_the_png_or_one_error_line(sweep: Path, tmp_path: Path) -> None:
    script = str(REPO_ROOT / "scripts" / "plot_runs.py")
    done = subprocess.run(
        [sys.executable, script, str(sweep), str(sweep / "0"), "-o", str(tmp_path / "both.png")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == tmp_path / "both.png"
    assert Image.open(tmp_path / "both.png").format == "PNG"
    done = subprocess.run(
        [sys.executable, script, str(sweep)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and (sweep / "curves.png").is_file()
    missing = subprocess.run(
        [sys.executable, script, str(tmp_path / "nowhere")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and missing.stderr.startswith("Error: no metrics.csv")
