"""The run directory: where each of its files lives (RunPaths), and its records.

The layout is a contract that users, eval.py, resume and the tests rely on (DESIGN.md, "The run
directory"); RunPaths is the one place that spells its file names. hparams.yaml says what ran,
summary.json how it ended. No torch here: the sweep callback reads run directories too.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from finetune.safety.atomic import write_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPaths:
    """Every path of one run directory, by name."""

    root: Path
    checkpoint_dirname: str = "checkpoints"

    @property
    def hparams(self) -> Path:
        return self.root / "hparams.yaml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def metrics_csv(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    @property
    def checkpoints(self) -> Path:
        return self.root / self.checkpoint_dirname

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def safetensors(self) -> Path:
        return self.checkpoints / "model.safetensors"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"


PACKAGES = ("torch", "torchvision", "timm", "hydra-core", "torchmetrics", "numpy", "finetune")


def git_commit() -> str | None:
    """The commit of the code that ran, with '+dirty' when there were uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_hparams(paths: RunPaths, cfg: DictConfig, facts: dict[str, Any]) -> None:
    """hparams.yaml: the resolved config plus facts no config holds (commit, versions, ...)."""
    record = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "run": {
            "command": " ".join(sys.argv),
            "git_commit": git_commit(),
            "versions": package_versions(),
            **facts,
        },
    }
    write_text(paths.hparams, yaml.safe_dump(record, sort_keys=False))


def write_summary(paths: RunPaths, summary: dict[str, Any]) -> None:
    """summary.json, rewritten whole (atomically) at every change of status."""
    write_text(paths.summary, json.dumps(summary, indent=2, default=str) + "\n")


def read_summary(paths: RunPaths) -> dict[str, Any] | None:
    return json.loads(paths.summary.read_text()) if paths.summary.is_file() else None
