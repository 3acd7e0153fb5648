"""Evaluating a saved checkpoint, and rebuilding a trained model from one.

The checkpoint carries its run's resolved config, so the model, the preprocessing and (by
default) the data and its split are rebuilt exactly as in training: on the same data, eval.py
reproduces the run's test metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from finetune.data import Preprocessing, Splits, build_splits
from finetune.data.samplers import SINGLE_PROCESS
from finetune.engine.setup import pick_device
from finetune.models.weights import monitored_weights, run_or_file, safe_torch_load
from finetune.safety.errors import FinetuneError, one_line
from finetune.safety.trust import trusted_config

log = logging.getLogger(__name__)


def checkpoint_path(target: str) -> Path:
    """A checkpoint file, or a run directory's checkpoints/best.pt."""
    return run_or_file(target, "ckpt", "a checkpoint file")


def model_from_checkpoint(
    state: Any, source: str = "the checkpoint", num_classes: int | None = None
) -> tuple[nn.Module, Preprocessing, DictConfig]:
    """The trained model in eval mode (LoRA adapters merged), its preprocessing and run config.

    The model is rebuilt by its task and source without pretrained weights (the checkpoint
    has them); what the task kept in the run directory (a trained tokenizer) is read from the
    directory of `source`, the checkpoint file.
    """
    from finetune.engine.state import check_format
    from finetune.models.lora import add_lora, merge_lora
    from finetune.tasks.base import build_task

    if not isinstance(state, dict) or "config" not in state or "model_state_dict" not in state:
        raise FinetuneError(
            f"{source} has no config or model_state_dict: it was not "
            "written by this project (use model.pretrained=PATH for weights)"
        )
    check_format(state, source)
    cfg = trusted_config(state["config"], source)
    classes = num_classes or len(state["classes"])
    model_cfg = OmegaConf.merge(cfg.model, {"pretrained": False})
    saved = list(state["classes"])
    task = build_task(cfg, saved if len(saved) == classes else [str(i) for i in range(classes)])
    task.reopen(Path(source).parent.parent)
    model, info = task.build_model(model_cfg)
    if cfg.freeze.policy == "lora":
        add_lora(model, cfg.freeze, info)
    try:
        model.load_state_dict(monitored_weights(state))
    except RuntimeError as error:
        raise FinetuneError(
            f"the checkpoint does not fit {cfg.model.name} with {classes} "
            f"classes: {one_line(error)}"
        ) from None
    if cfg.freeze.policy == "lora":
        merge_lora(model)
    return model.eval(), task.preprocessing(info, cfg.data), cfg


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, float]:
    """Metrics of `cfg.ckpt` on a split; printed and written as JSON beside the checkpoint."""
    from finetune.engine.loop import evaluate
    from finetune.engine.report import has_report
    from finetune.engine.report_request import ReportRequest
    from finetune.engine.state import check_format
    from finetune.tasks.base import build_task

    path = checkpoint_path(str(cfg.ckpt))
    state = safe_torch_load(path)
    if not isinstance(state, dict) or "config" not in state:
        raise FinetuneError(f"{path} has no config: it was not written by this project")
    check_format(state, path)
    run_cfg = trusted_config(state["config"], str(path))
    data_cfg = cfg.data if "data" in cfg else run_cfg.data  # an optional group
    if cfg.batch_size is not None:
        data_cfg = OmegaConf.merge(data_cfg, {"batch_size": cfg.batch_size})
    splits = splits_to_evaluate(data_cfg, "data" in cfg, state, path)
    model, prep, _ = model_from_checkpoint(state, str(path), len(splits.class_names))
    device = pick_device(cfg.device)
    task = build_task(run_cfg, splits.class_names)
    task.reopen(path.parent.parent)
    loader_cfg = OmegaConf.merge(run_cfg, {"data": data_cfg})
    loaders = task.data_loaders(loader_cfg, splits, prep, device, SINGLE_PROCESS)
    if cfg.split not in loaders:
        raise FinetuneError(f"split={cfg.split} must be one of {sorted(loaders)}")
    metrics = task.metrics().to(device)
    results = evaluate(model.to(device), loaders[cfg.split], task, metrics, device, cfg.split, None)
    out = path.with_name(f"{path.stem}.eval-{cfg.split}.json")
    out.write_text(
        json.dumps(
            {
                "checkpoint": str(path),
                "data": data_cfg.name,
                "split": cfg.split,
                "metrics": results,
            },
            indent=2,
        )
        + "\n"
    )
    for key, value in results.items():
        print(f"{key}: {value:.4f}")
    log.info("Wrote %s", out)
    if cfg.report.enabled and has_report(task):
        report_cfg = OmegaConf.merge(run_cfg, {"data": data_cfg, "report": cfg.report})
        title = f"{path} on {data_cfg.name} ({cfg.split})"
        report_dir = path.with_name(f"{path.stem}.report-{cfg.split}")
        request = ReportRequest(
            report_dir, title, model, splits, cfg.split, prep, report_cfg, device, None
        )
        task.write_report(request)
    return results


def splits_to_evaluate(
    data_cfg: DictConfig, other_data: bool, state: dict[str, Any], path: Path
) -> Splits:
    """The run's own split, as its split.json lists it; or other data (`data=...`).

    Other data may be anything whose class names are the run's, in the run's order. The run's
    own data is checked against the checkpoint's split hash: through the run's split.json (new
    files are left out, changed ones refused), or, for a checkpoint taken out of its run
    directory, by rebuilding the split and comparing the hashes.
    """
    from finetune.data.manifest import DataChanged, check_classes, checked_manifest, split_manifest
    from finetune.engine.rundir import RunPaths, read_split_manifest

    seed, saved_classes = state["config"]["seed"], list(state["classes"])
    expected = state.get("split_sha256")
    run = RunPaths(path.parent.parent, state["config"]["checkpoint"]["dirname"])
    in_run_dir = path.parent == run.checkpoints
    saved = read_split_manifest(run) if in_run_dir and not other_data else None
    if saved is not None and expected is not None:
        manifest = checked_manifest(saved, expected, run.split_manifest)
        return build_splits(data_cfg, seed, manifest)
    splits = build_splits(data_cfg, seed)
    fix = (
        f"pass data.classes={saved_classes} to choose and order them, or evaluate on data "
        "with the run's classes"
        if other_data
        else "restore the run's data, or pass data=... to evaluate on other data"
    )
    check_classes(saved_classes, splits.class_names, fix)
    if not other_data and expected is not None and split_manifest(splits)["sha256"] != expected:
        raise DataChanged(
            f"the run's data changed since training (its split no longer matches the "
            f"checkpoint's hash) and there is no split.json beside {path} to follow; "
            "evaluate from the run directory, restore the data, or pass data=... explicitly"
        )
    return splits
