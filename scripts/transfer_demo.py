"""Proof that transfer works, offline: pretrain on digits 0-4, probe a frozen backbone on 5-9.

    python scripts/transfer_demo.py                      # resnet18, about 2 minutes on 2 cores
    python scripts/transfer_demo.py --model test_resnet --epochs 3

Three runs of the real entrypoint (train.py):
  1. pretrain      all weights trained on classes 0-4
  2. transfer      classes 5-9, backbone frozen, loaded from run 1 (a linear probe)
  3. random        classes 5-9, backbone frozen at random init (explicitly allowed)
It prints the three test accuracies (and writes them to OUT/results.json); the transferred
backbone should beat the random one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def train(out: Path, name: str, *overrides: str) -> dict:
    """Run train.py into out/name and return its summary.json."""
    run_dir = out / name
    command = [
        sys.executable,
        "train.py",
        f"hydra.run.dir={run_dir}",
        "logger=csv",
        "trainer.progress_bar=false",
        *overrides,
    ]
    print(f"$ {' '.join(command[1:])}", flush=True)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{name} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=5, help="pretraining epochs")
    parser.add_argument("--probe-epochs", type=int, default=10, help="linear-probe epochs")
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="transfer_demo_"))

    common = (f"model={args.model}", "model.pretrained=false")
    probe = (
        "data.classes=[5,6,7,8,9]",
        "freeze=backbone",
        "freeze.cache_features=true",
        "data.augment=false",
        f"trainer.epochs={args.probe_epochs}",
        "optimizer.lr=1e-2",
        f"paths.cache_dir={out / 'cache'}",
    )
    pretrain = train(
        out, "pretrain", *common, "data.classes=[0,1,2,3,4]", f"trainer.epochs={args.epochs}"
    )
    transfer = train(
        out, "transfer", *probe, f"model={args.model}", f"model.pretrained={out / 'pretrain'}"
    )
    random = train(out, "random", *probe, *common, "freeze.allow_random_backbone=true")

    rows = [
        ("pretrain on 0-4 (all weights)", pretrain),
        ("transfer to 5-9 (frozen, loaded)", transfer),
        ("random frozen backbone on 5-9", random),
    ]
    print(f"\n{'run':36} test/acc   run directory")
    for label, summary in rows:
        print(f"{label:36} {summary['test']['test/acc']:.4f}     {summary['run_dir']}")
    accuracies = {
        name: summary["test"]["test/acc"]
        for name, summary in (("pretrain", pretrain), ("transfer", transfer), ("random", random))
    }
    (out / "results.json").write_text(json.dumps(accuracies, indent=2) + "\n")
    gain = accuracies["transfer"] - accuracies["random"]
    print(f"\ntransfer - random = {gain:+.4f} test accuracy")
    return 0 if gain > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
