"""Transfer across tasks, offline: a digits classifier's backbone as a segmentation encoder.

    python scripts/segmentation_transfer_demo.py                   # resnet18 (slow on 2 cores)
    python scripts/segmentation_transfer_demo.py --target 0.5 --seg-epochs 4

Three runs of the real entrypoint (train.py):
  1. classify     resnet18 (timm) trained on scikit-learn's digits, random init
  2. pretrained   experiment=segment_digits, its Unet's encoder loaded from run 1
                  (model.pretrained=<run 1>: the classifier's backbone, its head left out)
  3. random       experiment=segment_digits with a random encoder
It prints, for runs 2 and 3, the validation mIoU of each epoch and the first epoch reaching
--target (written to OUT/results.json).
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


def first_reaching(curve: list[float], target: float) -> int | None:
    return next((epoch for epoch, v in enumerate(curve, start=1) if v >= target), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cls-epochs", type=int, default=4, help="classification epochs")
    parser.add_argument("--seg-epochs", type=int, default=5, help="segmentation epochs")
    parser.add_argument("--target", type=float, default=0.5, help="validation mIoU to reach")
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="segmentation_transfer_"))

    classifier = train(out, "classify", "experiment=digits_resnet18", "model.pretrained=false",
                       f"trainer.epochs={args.cls_epochs}")  # fmt: skip
    segment = ("experiment=segment_digits", f"trainer.epochs={args.seg_epochs}")
    runs = {
        "pretrained": train(out, "pretrained", *segment, f"model.pretrained={classifier}"),
        "random": train(out, "random", *segment, "model.pretrained=false"),
    }
    results = {}
    for name, run_dir in runs.items():
        curve = miou_by_epoch(run_dir)
        results[name] = {"val_miou": curve, "epochs_to_target": first_reaching(curve, args.target)}
        shown = " ".join(f"{v:.3f}" for v in curve)
        print(f"{name:>10}: val/miou by epoch {shown}; "
              f"reaches {args.target} at epoch {results[name]['epochs_to_target']}")  # fmt: skip
    (out / "results.json").write_text(json.dumps({"target": args.target, **results}, indent=2))
    print(f"Runs and results.json in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
