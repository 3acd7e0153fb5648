"""`resume=`: continue a run in its own directory, with its own config, bitwise.

Two ways in, never confused (detectron2's resume_or_load): `resume=` restores the full state
and continues the same run; `model.pretrained=` takes weights only and starts afresh.

The run's saved config wins over the freshly composed one. A command-line override may change
only what `checkpoint.resume_may_change` lists (more epochs, loggers, device, workers); any other
override that differs from the saved run is an error that names the key.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)

LAST = "last.pt"
SINGLE_OPTION_GROUPS = ("trainer", "checkpoint", "report")


def resume_argv(argv: list[str]) -> list[str]:
    """Point Hydra at the resumed run's directory before it composes anything.

    `resume=RUN` (a run directory or a checkpoint in it) adds `hydra.run.dir=RUN` unless one is
    given, and keeps the run's original .hydra/ files by writing this invocation's to
    .hydra/resume-<time>/. `resume=auto` needs an explicit run directory and changes nothing.
    """
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith("resume=")]
    if (
        not values
        or values[-1] in ("auto", "null", "None", "")
        or "-m" in argv
        or "--multirun" in argv
    ):
        return argv
    run_dir = run_dir_of(Path(values[-1]))
    extra = []
    if not any(arg.startswith("hydra.run.dir=") for arg in argv):
        extra.append(f"hydra.run.dir={run_dir}")
    if not any(arg.startswith("hydra.output_subdir=") for arg in argv):
        extra.append(f"hydra.output_subdir=.hydra/resume-{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    return argv + extra


def run_dir_of(target: Path) -> Path:
    """The run directory of `resume=` target: the directory itself, or checkpoints/'s parent.

    A checkpoint file must lie in a run directory's checkpoints/ folder: resuming writes into
    the run directory, and the parent of any other folder is no run's.
    """
    if target.is_dir():
        return target
    if not target.is_file():
        raise FinetuneError(f"resume={target}: no such run directory or checkpoint file")
    run_dir = target.parent.parent
    if not ((run_dir / ".hydra").is_dir() or (run_dir / "summary.json").is_file()):
        raise FinetuneError(
            f"resume={target}: this checkpoint is not in a run directory's checkpoints/ folder "
            f"({run_dir} has no .hydra/ or summary.json); resume the run directory it came from, "
            f"or start a new run from its weights with model.pretrained={target}"
        )
    return run_dir


def find_checkpoint(target: str, run_dir: Path, dirname: str) -> Path | None:
    """The checkpoint that `resume=target` means; None for `auto` in a run with none yet."""
    if target == "auto":
        last = run_dir / dirname / LAST
        return last if last.is_file() else None
    path = Path(target).expanduser()
    if path.is_file():
        return path
    last = path / dirname / LAST
    if not last.is_file():
        raise FinetuneError(
            f"resume={target}: there is no {dirname}/{LAST} in that run directory; "
            "give a run directory that saved a checkpoint, or a checkpoint file"
        )
    return last


def merge_resume_config(
    composed: DictConfig, saved: dict[str, Any], overrides: list[str], may_change: list[str]
) -> DictConfig:
    """The saved config, with the command line's safe overrides applied.

    A key an override changed, compared with the saved run, is taken when it is listed in
    `may_change` and refused otherwise; keys nobody touched keep the saved values. A group
    whose options are `# @package _global_` (`debug=`, `experiment=`) may change any key, so
    for one of those every key of the composed config is compared with the saved run's.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    merged = OmegaConf.create(saved)
    # Groups with a single option may have gained keys since the run was saved: those take
    # today's defaults (groups with several options must not be mixed, so they stay as saved).
    for group in SINGLE_OPTION_GROUPS:
        today = OmegaConf.to_container(composed[group], resolve=True)
        merged[group] = OmegaConf.merge(today, saved.get(group, {}))
    fill_keys_added_since(merged, composed, saved)
    parsed = OverridesParser.create().parse_overrides(overrides)
    for override in parsed:
        key = override.key_or_group
        if key == "resume" or key.startswith("hydra"):
            continue
        for changed, new, old in changes(composed, merged, key):
            if not any(changed == safe or changed.startswith(f"{safe}.") for safe in may_change):
                raise FinetuneError(
                    f"resume: {override.input_line} sets {changed}={new} but the resumed run has "
                    f"{changed}={old}; only {', '.join(may_change)} may change on resume "
                    "(start a new run instead)"
                )
            OmegaConf.update(merged, changed, new, force_add=True)
    merged.resume = composed.resume
    return merged


def fill_keys_added_since(merged: DictConfig, composed: DictConfig, saved: dict[str, Any]) -> None:
    """Keys that an option of a several-option group gained since the run was saved (a run of
    an earlier version of this project) take today's defaults, where today's option is the one
    the run used (the same `name`); every key the run saved keeps its value. Without this, a
    run saved before `data.upscale_once_mb` existed could not resume."""
    for group, today in composed.items():
        was = saved.get(group)
        if group in SINGLE_OPTION_GROUPS or not isinstance(was, dict) or "name" not in was:
            continue
        if OmegaConf.is_dict(today) and today.get("name") == was["name"]:
            merged[group] = OmegaConf.merge(OmegaConf.to_container(today, resolve=True), was)


ABSENT = object()
# Set by the resume itself (where the run lives), never compared.
NOT_COMPARED = ("resume", "paths")


def changes(composed: DictConfig, merged: DictConfig, key: str) -> list[tuple[str, Any, Any]]:
    """(key, composed value, saved value) for each key that an override of `key` changed.

    `key` is a config key or group (`model`, `trainer.epochs`): compared whole. A key absent
    from the composed config is a `_global_` group or a deletion: every key is compared.
    """
    new = OmegaConf.select(composed, key, default=ABSENT)
    if new is not ABSENT:
        new_plain = OmegaConf.to_container(new, resolve=True) if OmegaConf.is_config(new) else new
        old = OmegaConf.select(merged, key)
        return [] if new_plain == old else [(key, new_plain, old)]
    now = flatten(OmegaConf.to_container(composed, resolve=True))
    before = flatten(OmegaConf.to_container(merged, resolve=True))
    return [
        (name, now.get(name), before.get(name))
        for name in sorted(now.keys() | before.keys())
        if now.get(name, ABSENT) != before.get(name, ABSENT)
        and name.split(".")[0] not in NOT_COMPARED
    ]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"trainer.epochs": 8, ...}: every leaf of a nested dict by its dotted key (lists whole)."""
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def load_resume_state(cfg: DictConfig, run_dir: Path) -> tuple[DictConfig, dict[str, Any] | None]:
    """(config to run with, checkpoint to continue from) for `cfg.resume`; (cfg, None) if none."""
    if cfg.resume is None:
        return cfg, None
    path = find_checkpoint(str(cfg.resume), run_dir, cfg.checkpoint.dirname)
    if path is None:
        return cfg, None  # resume=auto in a run that has not saved yet: a fresh start
    from hydra.core.hydra_config import HydraConfig

    from finetune.engine.state import check_format
    from finetune.models.weights import safe_torch_load

    state = safe_torch_load(path)
    saved = trusted_saved_config(state, path, cfg)  # before anything reads it
    check_format(state, path)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    merged = merge_resume_config(cfg, saved, overrides, list(cfg.checkpoint.resume_may_change))
    take_from_this_machine(merged, cfg, list(cfg.checkpoint.resume_from_this_machine))
    merged.paths.output_dir = str(run_dir)
    log.info("Resuming %s from %s", run_dir, path)
    return merged, state


def trusted_saved_config(state: Any, path: Path, composed: DictConfig) -> dict[str, Any]:
    """The checkpoint's config as plain data, once safety/trust.py has checked it.

    Its `_target_`s must be ones conf/ (or this command) offers at the same keys: a checkpoint
    never chooses the code that `instantiate` runs on resume.
    """
    from finetune.safety.trust import trusted_config

    if not isinstance(state, dict) or "config" not in state:
        raise FinetuneError(f"resume: {path} has no config; it was not written by this project")
    checked = trusted_config(state["config"], f"resume: {path}", composed)
    return OmegaConf.to_container(checked, resolve=False)


def take_from_this_machine(merged: DictConfig, composed: DictConfig, keys: list[str]) -> None:
    """Where this machine keeps things (paths, caches) comes from today's config, not the file.

    A checkpoint's saved paths would choose directories outside its run to write to (the
    feature cache); they are also wrong on another machine.
    """
    for key in keys:
        value = OmegaConf.select(composed, key)
        plain = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        OmegaConf.update(merged, key, plain, merge=False, force_add=True)


def trim_metrics_csv(path: Path, last_epoch: int) -> None:
    """Drop metrics.csv rows after the resumed epoch (written before a crash, redone now)."""
    if not path.is_file():
        return
    import csv

    from finetune.safety.atomic import atomic_write

    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    epoch_col = rows[0].index("epoch")
    kept = [rows[0]] + [row for row in rows[1:] if int(row[epoch_col]) <= last_epoch]
    if len(kept) == len(rows):
        return
    from io import StringIO

    buffer = StringIO()
    csv.writer(buffer).writerows(kept)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue().encode()))


def warn_if_schedule_jumps(scheduler: Any, state: dict[str, Any], epochs: int) -> bool:
    """Warn when the restored schedule gives another LR than the saved run had reached.

    A schedule shaped by the run's length (cosine) is rebuilt for the new `trainer.epochs`
    and restored at the saved step: extending a run stretches the rest of the curve, so the
    LR jumps back up from where it had decayed to. True when it jumps.
    """
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is None:  # not a LambdaLR: nothing to compare
        return False
    step = scheduler.last_epoch
    saved = [group["lr"] for group in state["optimizer_state_dict"]["param_groups"]]
    now = [base * factor(step) for base, factor in zip(scheduler.base_lrs, lambdas, strict=True)]
    if all(
        math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) for a, b in zip(saved, now, strict=True)
    ):
        return False
    log.warning(
        "resume: trainer.epochs=%d (the saved run had %s) reshapes the LR schedule: at step %d "
        "the LR jumps from %.3g to %.3g, then follows the new curve. To keep the saved curve, "
        "resume with the original trainer.epochs; to train longer on a smooth schedule, start a "
        "new run from these weights (model.pretrained=RUN) or use a schedule that does not "
        "depend on the run's length (scheduler=step or none)",
        epochs,
        state["config"]["trainer"]["epochs"],
        step,
        saved[0],
        now[0],
    )
    return True
