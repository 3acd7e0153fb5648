"""How long `python train.py` takes from process start to its first optimizer step, by phase.

    python scripts/time_to_first_step.py                         # resnet18 and test_resnet
    python scripts/time_to_first_step.py --model resnet18 --runs 5 trainer.compile=true

Each run is a real `python train.py` (one epoch of one batch, then validation and test on a
batch, CSV logs only) in a temporary directory; the run measures its own start-up
(finetune.engine.startup) into summary.json, and the table shows the median of each phase:
imports (the interpreter, torch, timm, Hydra's config), model (build, weights), data
(splits, loaders, a feature cache), setup (optimizer, compile wrapper, loggers) and
first_step (the first batch, forward and backward; torch.compile compiles here).
`scripts/benchmark.py --startup-runs N` prints the same table after its throughput rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PHASES = ("imports", "splits", "model", "data", "setup", "first_step", "total")
# Speed does not depend on the weights: no hub lookup; one batch each way, CSV logs only.
SHORT_RUN = (
    "model.pretrained=false",
    "trainer.epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.progress_bar=false",
    "logger=csv",
)


def startup_of_one_run(model: str, overrides: Sequence[str], threads: int) -> dict[str, float]:
    """Run train.py once in a temporary directory; the phases it recorded in summary.json."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        run_dir = Path(tmp) / "run"
        command = [
            sys.executable,
            "train.py",
            f"model={model}",
            *SHORT_RUN,
            *overrides,
            f"hydra.run.dir={run_dir}",
            f"paths.log_dir={tmp}",
        ]
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"train.py failed ({result.returncode}):\n{result.stderr[-2000:]}")
        return json.loads((run_dir / "summary.json").read_text())["startup_s"]


def startup_table(
    models: Sequence[str], overrides: Sequence[str], runs: int, threads: int = 1
) -> str:
    """One row per model: the median seconds of each phase over `runs` runs."""
    header = f"{'model':<14}" + "".join(f"{phase:>12}" for phase in PHASES)
    lines = [f"time to first optimizer step, s (median of {runs} runs)", header]
    for model in models:
        found = [startup_of_one_run(model, overrides, threads) for _ in range(runs)]
        medians = [statistics.median(run[phase] for run in found) for phase in PHASES]
        lines.append(f"{model:<14}" + "".join(f"{value:>12.2f}" for value in medians))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="+", default=["resnet18", "test_resnet"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS (0: torch's)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.compile=true")
    args = parser.parse_args(argv)
    # `--model resnet18 trainer.compile=true`: the override lands in --model's list; move it.
    args.overrides = [m for m in args.model if "=" in m] + args.overrides
    args.model = [m for m in args.model if "=" not in m]
    print(startup_table(args.model, args.overrides, args.runs, args.threads), flush=True)


if __name__ == "__main__":
    main()
