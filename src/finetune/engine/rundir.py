"""The run directory's records: hparams.yaml (what ran) and summary.json (how it ended)."""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from finetune.engine.checkpoint import atomic_write

log = logging.getLogger(__name__)

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


def write_hparams(run_dir: Path, cfg: DictConfig, facts: dict[str, Any]) -> None:
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
    write_text(run_dir / "hparams.yaml", yaml.safe_dump(record, sort_keys=False))


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """summary.json, rewritten whole (atomically) at every change of status."""
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))
