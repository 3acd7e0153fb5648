"""A config read back from disk is data: it never chooses code to run or a file to touch.

A checkpoint carries its run's resolved config, and `resume=`, `eval.py`, `finetune.load_model`
and `scripts/export.py` rebuild the run from it. Before any of it is used, `trusted_config`
checks it, because whoever wrote the file (a download, a colleague's run, a tampered copy) is
not the user at the keyboard:

- every `_target_` in it, wherever it sits, must be one that this project's conf/ YAML files
  offer at that same place (an allow-list derived from conf/, never a blocklist), or that the
  config composed for this very command names there (the user's own command line). So a saved
  `optimizer._target_: torch.load` (which unpickles a file: code) or `shutil.copy` is refused,
  and so is any `_target_` that a later config group adds, until conf/ offers it;
- no value may be an interpolation (`${...}`): a saved config is resolved when written, so one
  is planted, and resolving it would run a resolver (read the environment, make directories).

Model keyword arguments that would make timm read or write files are refused in models/
(factory.check_model_kwargs); paths inside checkpoints are file names in their own folder
(engine/checkpointer.py).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from finetune.safety.errors import FinetuneError

# The project's config tree: train.py's and eval.py's config_path.
CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
PACKAGE_HEADER = re.compile(r"^#\s*@package\s+(\S+)", re.MULTILINE)


class UntrustedConfig(FinetuneError):
    """A config read back from a file asks for code or interpolation: refused, nothing run."""


def trusted_config(
    saved: Any, source: str, composed: DictConfig | None = None, conf_dir: Path = CONF_DIR
) -> DictConfig:
    """`saved` as a DictConfig once it is checked; UntrustedConfig names what was refused."""
    if not isinstance(saved, dict):
        raise UntrustedConfig(f"{source}: its config is not a mapping; not this project's file")
    check_targets(saved, source, allowed_targets(conf_dir, composed))
    check_no_interpolations(saved, source)
    return OmegaConf.create(saved)


def allowed_targets(conf_dir: Path, composed: DictConfig | None) -> dict[str, set[str]]:
    """Config key -> the `_target_`s conf/ (and this command's composed config) put there."""
    allowed: dict[str, set[str]] = defaultdict(set)
    if not conf_dir.is_dir():
        raise FinetuneError(
            f"the project's config folder {conf_dir} is missing; run from a clone of the project"
        )
    for path in sorted(conf_dir.rglob("*.yaml")):
        text = path.read_text()
        node = yaml.safe_load(text)
        for key, target in targets_in(node, package_of(path.relative_to(conf_dir), text)):
            allowed[key].add(target)
    if composed is not None:
        plain = OmegaConf.to_container(composed, resolve=False)
        for key, target in targets_in(plain, ""):
            allowed[key].add(target)
    return allowed


def package_of(relative: Path, text: str) -> str:
    """Where a conf/ file's content lands: its group's path, or its `# @package` header's."""
    header = PACKAGE_HEADER.search(text)
    group = ".".join(relative.parent.parts)
    if header is None or header.group(1) == "_group_":
        return group
    package = header.group(1)
    return "" if package == "_global_" else package.replace("_group_", group)


def targets_in(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(key, value) of every `_target_` inside `node`; keys are dotted from `prefix`."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield prefix, node["_target_"]
        for key, value in node.items():
            yield from targets_in(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from targets_in(value, f"{prefix}.{index}" if prefix else str(index))


def check_targets(saved: dict[str, Any], source: str, allowed: dict[str, set[str]]) -> None:
    for key, target in targets_in(saved, ""):
        if isinstance(target, str) and target in allowed.get(key, set()):
            continue
        offered = ", ".join(sorted(allowed.get(key, set()))) or "none"
        where = f"{key}._target_" if key else "_target_"
        raise UntrustedConfig(
            f"{source}: its config sets {where}={target}, which this project's conf/ does not "
            f"offer there (offered: {offered}); refused, nothing was run: a file read back "
            "holds data, never code (if you trust it, offer it in conf/ or on the command line)"
        )


def check_no_interpolations(node: Any, source: str, key: str = "") -> None:
    """Refuse `${...}` anywhere: a resolved config has none, so one was planted."""
    if isinstance(node, dict):
        for name, value in node.items():
            check_no_interpolations(value, source, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            check_no_interpolations(value, source, f"{key}.{index}")
    elif isinstance(node, str) and "${" in node:
        raise UntrustedConfig(
            f"{source}: its config sets {key}={node}, an interpolation, which a saved (resolved) "
            "config never holds; refused, nothing was resolved"
        )
