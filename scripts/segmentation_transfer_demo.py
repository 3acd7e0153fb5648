"""Transfer across tasks, offline: a digits classifier's backbone as a segmentation encoder.

    OMP_NUM_THREADS=1 python scripts/segmentation_transfer_demo.py               # one seed
    OMP_NUM_THREADS=1 python scripts/segmentation_transfer_demo.py --seeds 42 43 44 45 46

For each seed, three runs of the real entrypoint (train.py), all with that seed:
  1. classify     resnet18 (timm), random init, trained on scikit-learn's digits resized to the
                  size a digit has on a canvas (DIGIT_SIZE pixels): the scale the encoder will
                  see. Same seed, so the same digits split: its training digits are the ones the
                  segmentation canvases of the training split are drawn from.
  2. pretrained   experiment=segment_digits, its Unet's encoder loaded from run 1
                  (model.pretrained=<run 1>: the classifier's backbone, its head left out) and,
                  as one would use a pretrained encoder on little data, frozen
                  (--pretrained-freeze, freeze=backbone: only the decoder trains)
  3. random       the same command with a random encoder, trained whole (freeze=none: the
                  best a random encoder can do; frozen, it would be a fixed random projection)
Runs 2 and 3 differ only in model.pretrained and freeze: same data, seed, epochs, learning
rates, evaluation. They use 0.15 canvases per digit, under a third of the experiment's
(--canvases-per-digit): with few masks and many labelled digits, transfer has the most to give.
The script prints, for runs 2 and 3, the validation mIoU of each epoch, the first epoch reaching
--target and the test mIoU (also in OUT/results.json). Measured: README, Segmentation.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DIGIT_SIZE = 12  # data.digit_size of experiment=segment_digits


def train(out: Path, name: str, *overrides: str) -> Path:
    """Run train.py into out/name; return the run directory."""
    run_dir = out / name
    command = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", "logger=csv",
               "trainer.progress_bar=false", *overrides]  # fmt: skip
    print(f"$ {' '.join(command[1:])}", flush=True)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{name} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return run_dir


def miou_by_epoch(run_dir: Path) -> list[float]:
    with (run_dir / "metrics.csv").open() as f:
        return [float(row["val/miou"]) for row in csv.DictReader(f) if row.get("val/miou")]


def test_miou(run_dir: Path) -> float:
    return json.loads((run_dir / "summary.json").read_text())["test"]["test/miou"]


def first_reaching(curve: list[float], target: float) -> int | None:
    return next((epoch for epoch, v in enumerate(curve, start=1) if v >= target), None)


def compare(out: Path, seed: int, args: argparse.Namespace) -> dict[str, dict]:
    """Classifier, then the pretrained and the random segmentation runs of one seed."""
    classifier = train(out, f"classify-{seed}", "experiment=digits_resnet18",
                       "model.pretrained=false", f"data.image_size={DIGIT_SIZE}", f"seed={seed}",
                       f"trainer.epochs={args.cls_epochs}")  # fmt: skip
    segment = ("experiment=segment_digits", f"data.digit_size={DIGIT_SIZE}", f"seed={seed}",
               f"data.canvases_per_digit={args.canvases_per_digit}",
               f"trainer.epochs={args.seg_epochs}")  # fmt: skip
    pretrained = (f"model.pretrained={classifier}", f"freeze={args.pretrained_freeze}")
    runs = {
        "pretrained": train(out, f"pretrained-{seed}", *segment, *pretrained),
        "random": train(out, f"random-{seed}", *segment, "model.pretrained=false", "freeze=none"),
    }
    results = {}
    for name, run_dir in runs.items():
        curve = miou_by_epoch(run_dir)
        results[name] = {
            "val_miou": curve,
            "epochs_to_target": first_reaching(curve, args.target),
            "test_miou": test_miou(run_dir),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cls-epochs", type=int, default=4, help="classification epochs")
    parser.add_argument("--seg-epochs", type=int, default=8, help="segmentation epochs")
    parser.add_argument("--canvases-per-digit", type=float, default=0.15,
                        help="segmentation canvases per digit (the experiment: 0.5)")  # fmt: skip
    parser.add_argument("--pretrained-freeze", default="backbone",
                        choices=["backbone", "none", "gradual", "partial"],
                        help="the pretrained run's freeze group (random: none)")  # fmt: skip
    parser.add_argument("--target", type=float, default=0.12, help="validation mIoU to reach")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="one comparison each")
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="segmentation_transfer_"))

    results = {seed: compare(out, seed, args) for seed in args.seeds}
    for seed, by_encoder in results.items():
        for name, result in by_encoder.items():
            shown = " ".join(f"{v:.3f}" for v in result["val_miou"])
            print(f"seed {seed} {name:>10}: val/miou by epoch {shown}; reaches {args.target} "
                  f"at epoch {result['epochs_to_target']}; "
                  f"test/miou {result['test_miou']:.3f}")  # fmt: skip
    (out / "results.json").write_text(json.dumps({"target": args.target, **results}, indent=2))
    print(f"Runs and results.json in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
