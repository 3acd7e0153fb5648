"""What every fault test checks of a run directory and its output (tests/integration/test_faults_*).

Every fault must leave the run directory consistent (summary.json's status says what
happened, the last good checkpoint loads with weights_only=True, metrics.csv has whole rows),
print one line naming the cause and the fix, and exit with its own code (errors.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

TINY = (
    "model=test_resnet",
    "data.image_size=16",
    "data.batch_size=32",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=1",
    "trainer.progress_bar=false",
    "logger=csv",
)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_whole_metrics(run_dir: Path) -> list[list[str]]:
    """metrics.csv: every row as long as the header, the last one ended."""
    text = (run_dir / "metrics.csv").read_text()
    assert text.endswith("\n")
    rows = list(csv.reader(text.splitlines()))
    assert all(len(row) == len(rows[0]) for row in rows), text
    return rows[1:]


def assert_fault(output: str, returncode: int, code: int, *words: str) -> str:
    """The exit code, no traceback, and exactly one error line holding `words`.

    The line is "[time][ERROR] Error: ..." once Hydra set up logging, "Error: ..." before.
    """
    assert returncode == code, output[-3000:]
    assert "Traceback (most recent call last)" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if re.match(r"(\[.*\]\[ERROR\] )?Error: ", line)]
    assert len(lines) == 1, output[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def assert_finite(state: dict) -> None:
    weights = state["model_state_dict"]
    bad = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
    assert not bad, f"non-finite weights in a checkpoint: {bad[:5]}"


def wait_for_line(process: subprocess.Popen, text: str) -> list[str]:
    """Read the process's output until a line holds `text`; the lines read so far."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if text in line:
            return lines
    pytest.fail(f"no line with {text!r}:\n{''.join(lines)[-3000:]}")


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
