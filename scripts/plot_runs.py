"""Learning curves of one or more runs in one PNG: loss and the monitored metric per epoch.

    python scripts/plot_runs.py outputs/2026-11-26/23-20-00            # -> <run>/curves.png
    python scripts/plot_runs.py outputs/multirun/2026-11-26/23-30-00   # every job of a sweep
    python scripts/plot_runs.py RUN_A RUN_B -o compare.png --metric val/f1

A run is a directory with metrics.csv; a directory without one is searched for jobs that have
it. Each line is labelled by the run's overrides (.hydra/overrides.yaml), less those all runs
share. The metric defaults to the first run's `monitor`. Every run draws its own curves.png
at its end with the same code (finetune/records/curves.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from finetune.records.curves import plot_runs
from finetune.safety.errors import EXIT_BAD_INPUT, FinetuneError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument(
        "-o", "--output", type=Path, help="PNG to write (default: curves.png in the one directory "
        "given, else in the current directory)"
    )  # fmt: skip
    parser.add_argument("--metric", help="metric of the right panel (default: the run's monitor)")
    args = parser.parse_args(argv)
    output = args.output or (args.runs[0] if len(args.runs) == 1 else Path()) / "curves.png"
    try:
        written = plot_runs(args.runs, output, args.metric)
    except FinetuneError as error:
        print(f"Error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
