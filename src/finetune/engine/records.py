"""What a run writes about itself: hparams.yaml at the start, a row, pictures and a log line each
epoch, summary.json throughout (running, then how it ended, with one line for a failure).

Called by engine/run.py at fixed points of the recipe; only rank 0 writes files.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from finetune.data.class_counts import report_class_counts, split_class_counts
from finetune.data.folders import skipped_images
from finetune.data.tracking import last_sample_of, worker_deaths
from finetune.engine import lr_finder
from finetune.engine.distributed import dist_info, quiet_other_ranks
from finetune.engine.rundir import RunPaths, read_summary, write_hparams, write_summary
from finetune.engine.setup import model_summary
from finetune.models.factory import count_parameters
from finetune.models.weights import EMA_PREFIX
from finetune.records.augmented import log_augmented_grid
from finetune.records.progress import log_to_file_only
from finetune.safety.errors import one_line
from finetune.safety.faults import explain, fault_counts, silence_dead_workers, status_of

if TYPE_CHECKING:
    from finetune.engine.run import Run
    from finetune.records.predictions import Predictions

log = logging.getLogger(__name__)


def checkpoint_metadata(run: Run) -> dict[str, str]:
    """What model.safetensors and a W&B model artifact say about the weights."""
    return {"model": run.cfg.model.name, "classes": ",".join(run.parts.task.class_names)}


def record_epoch(run: Run, row: dict[str, Any], samples: Predictions | None, is_best: bool) -> None:
    """Scalars, pictures and histograms to the loggers; the epoch's log line; summary.json."""
    step, loggers = run.loop.global_step, run.loggers
    # train/loss is the step loss in the scalar logs; the epoch's mean gets its own tag.
    scalars = {k: v for k, v in row.items() if k not in ("epoch", "step", "train/loss")}
    loggers.log_metrics({"train/loss_epoch": row["train/loss"], **scalars}, step)
    loggers.log_predictions(samples, row["epoch"], step)  # the task's pictures
    loggers.log_histograms(run.parts.model, row["epoch"], step)  # last step's .grad: no sync
    val = {k: v for k, v in row.items() if k.startswith(("val/", EMA_PREFIX))}
    log.info(
        "epoch %d/%d | train/loss %.4f | %s | lr %.2e | %.0f %s | %.1fs%s",
        row["epoch"],
        run.cfg.trainer.epochs,
        row["train/loss"],
        format_metrics(val),
        row["lr"],
        row["images_per_s"],
        run.parts.task.rate_unit,
        row["epoch_time_s"],
        " | best" if is_best else "",
    )
    run.summary.update(best=run.checkpointer.best, final=row, epochs_done=row["epoch"])
    run.summary.update(faults_so_far(run))
    if run.rank.is_main:
        write_summary(run.paths, run.summary)


def record_start(run: Run) -> None:
    """hparams.yaml (the resolved config and the facts no config holds) and the model summary."""
    if not run.rank.is_main:
        return
    parts = run.parts
    facts = {
        "device": str(parts.device),
        "world_size": run.rank.world_size,
        "model": parts.model_info.record(),
        "parameters": count_parameters(parts.model),
        "preprocessing": parts.prep.as_dict(),
        "classes": parts.task.class_names,
        "split_sizes": {k: len(v.dataset) for k, v in parts.loaders.items()},
        "class_counts": split_class_counts(parts.splits),
        "test_split": parts.splits.test_source,
    }
    if run.lr_found is not None:  # optimizer.lr=find: the range test that chose the LR
        facts["lr_find"] = {"suggestion": run.lr_found.suggestion, "plot": lr_finder.PLOT}
        lr_finder.record(run.lr_found, run.cfg, run.paths.root, run.loggers)
    if parts.task.sees_images and not run.cfg.freeze.cache_features:  # features: no images
        augment, prep = run.cfg.augment, parts.prep
        log_augmented_grid(
            run.loggers, parts.splits.train, augment.grid_images, parts.stepper.mix, prep
        )
    write_hparams(run.paths, run.cfg, facts)
    log_to_file_only(model_summary(parts.model, parts.task.example_input(parts.prep), parts.device))


def describe(run: Run) -> None:
    """One line: model, weights, device, classes, parameters, training samples."""
    parts = run.parts
    params = count_parameters(parts.model)
    if run.rank.is_main:
        samples = "images" if parts.task.sees_images else "texts"
        report_class_counts(
            split_class_counts(parts.splits), run.cfg.data.min_val_per_class, samples
        )
    run.summary.update(
        pretrained=parts.model_info.pretrained_source, classes=parts.task.class_names
    )
    log.info(
        "%s (%s) on %s: %d classes, %s parameters (%s trainable); %d train samples",
        run.cfg.model.name,
        parts.model_info.pretrained_source,
        parts.device,
        len(parts.task.class_names),
        f"{params['total']:,}",
        f"{params['trainable']:,}",
        len(parts.splits.train),
    )


def start_summary(
    paths: RunPaths, cfg: DictConfig, resumed: dict[str, Any] | None
) -> dict[str, Any]:
    """summary.json says `running` from the start (a resumed run keeps what it had)."""
    summary = (read_summary(paths) or {}) if resumed else {}
    summary.update(status="running", run_dir=str(paths.root), monitor=cfg.monitor, mode=cfg.mode)
    summary.pop("error", None)
    if dist_info().is_main:
        write_summary(paths, summary)
    else:
        quiet_other_ranks()
    return summary


def record_failure(
    error: BaseException,
    cfg: DictConfig,
    paths: RunPaths,
    summary: dict[str, Any],
    started: float,
) -> None:
    """summary.json says how the run ended; the error becomes one line with the fix."""
    silence_dead_workers()  # the failure is written and said once, whatever dies next
    # Out of memory, a dead worker, ...: one line with the fix.
    fault = explain(error, cfg, last_sample_of, worker_deaths)
    interrupted = isinstance(error, KeyboardInterrupt)
    summary["error"] = None if interrupted else one_line(fault)
    finish_summary(paths, summary, status_of(fault), started)
    if interrupted:  # a second Ctrl-C: stopped at once, mid-step
        log.warning(
            "Interrupted again: stopped at once; the last saved last.pt is whole. "
            "Continue with: python train.py resume=%s",
            paths.root,
        )
        raise SystemExit(128 + signal.SIGINT) from None
    if fault is not error:
        raise fault from None


def finish_summary(paths: RunPaths, summary: dict[str, Any], status: str, started: float) -> None:
    if not dist_info().is_main:
        return
    summary["status"] = status
    summary["wall_time_s"] = round(summary.get("wall_time_s_before", 0) + time.time() - started, 2)
    write_summary(paths, summary)


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def faults_so_far(run: Run) -> dict[str, Any]:
    """Saves that failed (checkpoint.on_error=warn) and images skipped (data.on_bad_image=skip)."""
    return fault_counts(run.checkpointer, skipped_images(run.parts.splits))
