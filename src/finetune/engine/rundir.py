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
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf

from finetune.safety.atomic import write_text

if TYPE_CHECKING:
    from finetune.data.splits import Splits

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
    def split_manifest(self) -> Path:
        """split.json: what each split holds (data/manifest.py), checked on resume and eval."""
        return self.root / "split.json"

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


def record_split_manifest(paths: RunPaths, splits: Splits, write: bool) -> str:
    """The hash of the run's split, for its checkpoints; `write`: split.json too (a new run)."""
    from finetune.data.manifest import split_manifest

    manifest = split_manifest(splits)
    if write:
        write_text(paths.split_manifest, json.dumps(manifest, indent=1) + "\n")
    return manifest["sha256"]


def read_split_manifest(paths: RunPaths) -> dict[str, Any] | None:
    """The run's split.json as plain data; None where there is none, {} where it is not JSON."""
    if not paths.split_manifest.is_file():
        return None
    try:
        return json.loads(paths.split_manifest.read_text())
    except (OSError, ValueError):
        return {}  # damaged: checked_manifest says so


def checkpoint_split_manifest(paths: RunPaths, state: dict[str, Any]) -> dict[str, Any] | None:
    """The split.json of the run that saved `state`, checked against the checkpoint's hash.

    None for a checkpoint from before split manifests: its split is rebuilt unchecked.
    """
    from finetune.data.manifest import checked_manifest

    if state.get("split_sha256") is None:
        log.warning(
            "the checkpoint predates split manifests: its data split is rebuilt from the "
            "config without a check that it is the one it was trained on"
        )
        return None
    return checked_manifest(read_split_manifest(paths), state["split_sha256"], paths.split_manifest)
