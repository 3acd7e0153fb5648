"""Predict on new files with a trained run: predictions.csv and a contact sheet.

    python predict.py ckpt=RUN input=DIR                      # the entrypoint (conf/predict.yaml)
    result = finetune.predict("outputs/...", "photos/")       # a notebook: rows, no files

The model, its preprocessing and its class names come from the checkpoint, as in eval.py.
Inputs load in a fixed order through a DataLoader (batched, workers); an unreadable file is
listed (unreadable.csv) and the others go on. `predict.tta=flip` averages the probabilities
of each image and its mirror; `predict.temperature=auto` divides the logits by the temperature
that the run's report fitted on validation; `predict.backend=onnx` runs an exported model with
ONNX Runtime instead of PyTorch.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from finetune.engine.evaluation import checkpoint_path, model_from_checkpoint
from finetune.engine.setup import pick_device
from finetune.models.weights import safe_torch_load
from finetune.records.prediction_files import add_truth, write_rows
from finetune.records.prediction_masks import earlier_inputs, remove_stale_masks
from finetune.records.progress import ProgressBar
from finetune.safety.errors import FinetuneError
from finetune.tasks.base import Task, build_task

log = logging.getLogger(__name__)

TTA_CHOICES = ("none", "flip")
BACKENDS = ("torch", "onnx")
CONF = Path(__file__).resolve().parents[3] / "conf" / "predict.yaml"


@dataclass
class PredictResult:
    rows: list[dict[str, Any]]  # one per readable input, as in predictions.csv
    unreadable: list[dict[str, str]] = field(default_factory=list)  # file, error
    accuracy: float | None = None  # when the inputs were labelled
    files: dict[str, Path] = field(default_factory=dict)  # what was written, by kind


def predict(ckpt: str, input: str, out: str | None = None, **options: Any) -> PredictResult:  # noqa: A002
    """For notebooks: predict on `input` with predict.yaml's defaults, `options` overriding them.

    Nothing is written unless `out` names a folder.
    """
    settings = OmegaConf.load(CONF).predict
    unknown = sorted(set(options) - set(settings))
    if unknown:
        raise FinetuneError(f"finetune.predict() has no option {unknown}; use {sorted(settings)}")
    settings = OmegaConf.merge(settings, options)
    return run_predict(str(ckpt), str(input), settings, Path(out) if out else None)


def predict_from_config(cfg: DictConfig) -> PredictResult:
    """predict.py: the files go to `out`, by default <run>/predictions/."""
    check_settings(cfg.predict)  # a bad option is named before anything loads
    path = checkpoint_path(str(cfg.ckpt))
    out = Path(cfg.out) if cfg.out else path.parent.parent / "predictions"
    result = run_predict(str(cfg.ckpt), str(cfg.input), cfg.predict, out)
    done = f"{len(result.rows)} images predicted"
    if result.accuracy is not None:
        done += f", accuracy {result.accuracy:.4f}"
    if result.unreadable:
        done += f", {len(result.unreadable)} unreadable (listed in {result.files['unreadable']})"
    log.info("%s: %s", done, out / "predictions.csv")
    return result


def run_predict(ckpt: str, spec: str, settings: DictConfig, out: Path | None) -> PredictResult:
    check_settings(settings)
    path = checkpoint_path(ckpt)
    state = safe_torch_load(path)
    model, prep, run_cfg = model_from_checkpoint(state, str(path))
    class_names = list(state["classes"])
    task = build_task(run_cfg, class_names)  # what the outputs mean and how rows look
    task.reopen(path.parent.parent)
    inputs, loader = task.prediction_inputs(spec, prep, run_cfg.data, settings)
    forward = build_forward(settings, model, path)
    temperature = resolve_temperature(settings.temperature, path)
    probs, indices, errors = predict_probs(loader, forward, task, settings, temperature)
    names = [inputs.names[i] for i in indices]
    rows = task.prediction_rows(names, probs, settings.top_k)
    truths = [inputs.truths[i] for i in indices] if inputs.labelled else None
    if truths is not None:
        add_truth(rows, truths)
    unreadable = [{"file": inputs.names[i], "error": error} for i, error in errors]
    for item in unreadable:
        log.warning("unreadable input %s: %s (left out)", item["file"], item["error"])
    judged = [row["correct"] for row in rows if "correct" in row]
    accuracy = sum(judged) / len(judged) if judged else None
    result = PredictResult(rows, unreadable, accuracy)
    if out is not None:
        earlier = earlier_inputs(out)
        write_outputs(out, result)
        files = [inputs.files[i] for i in indices] if inputs.files else []  # texts have none
        result.files.update(task.prediction_pictures(out, files, rows, probs, settings))
        removed = remove_stale_masks(out, earlier, names)  # rows name texts by their text
        if removed:
            log.info("removed the masks of %d inputs of an earlier predict into %s", removed, out)
    return result


def check_settings(settings: DictConfig) -> None:
    if settings.tta not in TTA_CHOICES:
        raise FinetuneError(f"predict.tta={settings.tta} must be one of {', '.join(TTA_CHOICES)}")
    if settings.backend not in BACKENDS:
        raise FinetuneError(
            f"predict.backend={settings.backend} must be one of {', '.join(BACKENDS)}"
        )
    if not isinstance(settings.top_k, int) or settings.top_k < 1:
        raise FinetuneError(f"predict.top_k={settings.top_k} must be a positive integer")
    if not isinstance(settings.batch_size, int) or settings.batch_size < 1:
        raise FinetuneError(f"predict.batch_size={settings.batch_size} must be a positive integer")


def resolve_temperature(setting: Any, ckpt: Path) -> float:
    """null: 1 (as trained); auto: the run report's calibration.json; or a positive number."""
    if setting is None:
        return 1.0
    if setting == "auto":
        record = ckpt.parent.parent / "report" / "calibration.json"
        if not record.is_file():
            raise FinetuneError(
                f"predict.temperature=auto needs {record} (written by a run's report, "
                "report.enabled=true); give a number or null instead"
            )
        setting = json.loads(record.read_text()).get("temperature")
    try:
        value = float(setting)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise FinetuneError(f"predict.temperature={setting} must be null, auto or a number > 0")
    return value


def build_forward(
    settings: DictConfig, model: torch.nn.Module, ckpt: Path
) -> Callable[[torch.Tensor], torch.Tensor]:
    """images -> logits, with PyTorch on the best device, or with ONNX Runtime."""
    if settings.backend == "onnx":
        return onnx_forward(
            Path(settings.onnx) if settings.onnx else ckpt.parent.parent / "export" / "model.onnx"
        )
    device = pick_device(settings.device)
    model = model.to(device).eval()

    def forward(images: torch.Tensor) -> torch.Tensor:
        return model(images.to(device)).float().cpu()

    return forward


def onnx_forward(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime
    except ImportError:
        raise FinetuneError(
            "predict.backend=onnx needs ONNX Runtime: pip install onnxruntime "
            "(or predict.backend=torch)"
        ) from None
    if not path.is_file():
        raise FinetuneError(
            f"predict.onnx={path} does not exist; export one with "
            "python scripts/export.py RUN --formats onnx, or set predict.onnx=PATH"
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def forward(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: images.numpy()})[0]).float()

    return forward


@torch.no_grad()
def predict_probs(
    loader: DataLoader,
    forward: Callable[[torch.Tensor], torch.Tensor],
    task: Task,
    settings: DictConfig,
    temperature: float,
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """What the task keeps of the readable inputs' class probabilities (Task.kept_outputs),
    their indices, and the unreadable ones."""
    bar = ProgressBar(len(loader), "predict", settings.progress_bar)
    probs, indices, errors = [], [], []
    for batch in loader:
        errors += batch["errors"]
        if batch["images"] is not None:
            images = batch["images"]
            p = task.probabilities(forward(images) / temperature)
            if settings.tta == "flip":  # the mirror image too, its outputs mirrored back
                mirrored = task.probabilities(forward(images.flip(-1)) / temperature)
                p = (p + task.unmirror(mirrored)) / 2
            probs.append(task.kept_outputs(p))
            indices += batch["indices"]
        bar.advance()
    bar.close()
    if not probs:
        raise FinetuneError(f"none of the {len(errors)} inputs could be read; see the warnings")
    return torch.cat(probs), indices, errors


def write_outputs(out: Path, result: PredictResult) -> None:
    columns = list(result.rows[0])
    result.files["csv"] = write_rows(out / "predictions.csv", result.rows, columns)
    unreadable = out / "unreadable.csv"
    if result.unreadable:
        result.files["unreadable"] = write_rows(unreadable, result.unreadable, ["file", "error"])
    else:
        unreadable.unlink(missing_ok=True)  # from an earlier prediction into the same folder
