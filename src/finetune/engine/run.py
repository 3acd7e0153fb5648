"""One training run as a recipe, top to bottom: setup, fit, test.

    run(cfg)
      setup(cfg)  -> Run: data, task, model, freezing, optimizer, precision, EMA (build.py),
                     loggers, checkpointer, and the resumed state when `resume=` asks
      fit(run)    -> for each epoch: train_one_epoch, evaluate, record, checkpoint
      test(run)   -> the best checkpoint on the test split, recorded in summary.json

Nothing here knows the task or the model source: they come in through `run.parts.task`. Under
torchrun every rank runs this; only rank 0 writes files.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import nn

from finetune.engine.build import Parts, build_parts
from finetune.engine.distributed import DistInfo, barrier, dist_info, rank_device
from finetune.engine.early_stopping import (
    EarlyStopping,
    early_stopping,
    finished_status,
    stop_early,
)
from finetune.engine.final_test import test
from finetune.engine.loop import LoopState, evaluate, train_one_epoch
from finetune.engine.lr_finder import RangeTest, resolve_lr
from finetune.engine.memory import keep_freed_memory
from finetune.engine.records import (
    checkpoint_metadata,
    describe,
    finish_summary,
    format_metrics,
    record_epoch,
    record_failure,
    record_start,
    start_summary,
)
from finetune.engine.resume import load_resume_state, trim_metrics_csv, warn_if_schedule_jumps
from finetune.engine.rundir import RunPaths, checkpoint_split_manifest, record_split_manifest
from finetune.engine.setup import pick_device, seed_everything
from finetune.engine.startup import StartupClock
from finetune.engine.state import restore, state_of
from finetune.engine.writer import BackgroundCheckpointer, build_checkpointer
from finetune.models.weights import EMA_PREFIX
from finetune.records.loggers import Loggers, build_loggers
from finetune.records.predictions import Predictions
from finetune.safety.checks import check_config
from finetune.safety.signals import RunStopped, StopRequest
from finetune.sweep.pruning import report as report_to_sweeper

if TYPE_CHECKING:
    from finetune.tasks.base import EpochMetrics

log = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything one run holds between its phases."""

    cfg: DictConfig
    paths: RunPaths
    rank: DistInfo
    parts: Parts  # data, task, model, freezing, optimizer, precision, EMA
    net: nn.Module  # what the loop trains: compiled and DDP-wrapped as the config asks
    checkpointer: BackgroundCheckpointer  # a Checkpointer that saves from a thread
    loggers: Loggers
    loop: LoopState
    summary: dict[str, Any]
    stop: StopRequest
    stopper: EarlyStopping  # trainer.patience
    lr_found: RangeTest | None  # optimizer.lr=find: the range test that chose the LR
    split_sha256: str  # the data behind the run: its split.json's hash, in every checkpoint

    @functools.cached_property
    def metrics(self) -> EpochMetrics:
        """The task's metrics on the device, built at the first validation: a task that uses
        torchmetrics (multi-label) imports it then, 4 s here, not before the first step."""
        return self.parts.task.metrics().to(self.parts.stepper.device)


def run(cfg: DictConfig) -> float:
    """Train, validate every epoch, test the best checkpoint; return the best monitored value."""
    started = time.time()
    cfg, resumed = load_resume_state(cfg, Path(cfg.paths.output_dir))
    paths = RunPaths(Path(cfg.paths.output_dir), cfg.checkpoint.dirname)
    summary = start_summary(paths, cfg, resumed)
    stop = StopRequest()
    try:
        current = setup(cfg, paths, summary, resumed, stop)
        fit(current)
        best = test(current)
    except RunStopped as stopped:
        finish_summary(paths, summary, stopped.status, started)
        log.warning(
            "Run %s; last.pt is saved. Continue with: python train.py resume=%s",
            stopped,
            paths.root,
        )
        stop.hand_over(stopped.signum)  # submitit: requeue the job (it continues by resume=auto)
        raise SystemExit(stopped.exit_code) from None
    except BaseException as error:
        record_failure(error, cfg, paths, summary, started)
        raise
    finally:
        stop.close()
    finish_summary(paths, summary, finished_status(summary), started)
    log.info(
        "Done in %.1fs: %s | run directory %s",
        time.time() - started,
        format_metrics(summary["test"]),
        paths.root,
    )
    return best


def setup(
    cfg: DictConfig,
    paths: RunPaths,
    summary: dict[str, Any],
    resumed: dict[str, Any] | None,
    stop: StopRequest,
) -> Run:
    """Build the run's parts, its records and its checkpointer; restore them on resume."""
    clock = StartupClock("imports")  # python, torch, Hydra's config: all before this line
    check_config(cfg)
    rank = dist_info()
    device = rank_device(cfg.trainer.device, rank) or pick_device(cfg.trainer.device)
    seed_everything(cfg.seed)
    torch.autograd.set_detect_anomaly(cfg.trainer.detect_anomaly)  # the op that made a NaN
    keep_freed_memory(cfg.trainer.keep_freed_memory)  # no page faults every step (memory.py)
    found = resolve_lr(cfg, device, rank)  # optimizer.lr=find: the range test's suggestion
    saved_split = checkpoint_split_manifest(paths, resumed) if resumed is not None else None
    parts = build_parts(cfg, device, rank, clock, saved_split)
    split_sha256 = record_split_manifest(paths, parts.splits, saved_split is None and rank.is_main)
    checkpointer = build_checkpointer(cfg, paths, rank, device)
    loggers = build_loggers(
        cfg,
        paths.root,
        is_main=rank.is_main,
        wandb_run_id=resumed["wandb_run_id"] if resumed is not None else None,
        resume_step=resumed["global_step"] if resumed is not None else None,
    )
    run = Run(
        cfg,
        paths,
        rank,
        parts,
        parts.net,
        checkpointer,
        loggers,
        LoopState(),
        summary,
        stop,
        early_stopping(cfg.trainer, cfg.mode),
        found,
        split_sha256,
    )
    checkpointer.checkpointer.metadata = checkpoint_metadata(run)  # resume may rewrite safetensors
    if resumed is not None:
        restore(resumed, run)
        warn_if_schedule_jumps(parts.stepper.scheduler, resumed, cfg.trainer.epochs)
        trim_metrics_csv(paths.metrics_csv, run.loop.epoch)
        summary["wall_time_s_before"] = summary.get("wall_time_s", 0)
        log.info("Resumed at epoch %d, step %d", run.loop.epoch, run.loop.global_step)
    else:
        record_start(run)
    describe(run)
    clock.mark("setup")
    clock.stop_at_first_step(parts.stepper.optimizer, summary)  # compile, first batch count here
    return run


def fit(run: Run) -> None:
    """Epochs until `trainer.epochs`, each one recorded and checkpointed."""
    while run.loop.epoch < run.cfg.trainer.epochs:
        patience_ran_out = run_epoch(run)
        if run.stop.requested:
            run.checkpointer.wait()  # the epoch's checkpoint is on disk before the run stops
            raise run.stop.stopped()
        if patience_ran_out:
            stop_early(run.cfg, run.loop.epoch, run.summary)
            break
    run.checkpointer.wait()  # the last epoch's write (engine/writer.py)
    run.summary.update(best=run.checkpointer.best)


def run_epoch(run: Run) -> bool:
    """Train one epoch, validate, write its row, save its checkpoint, record its pictures.

    True when early stopping (trainer.patience) says the run should end here.
    """
    cfg, parts, loop = run.cfg, run.parts, run.loop
    epoch, epoch_start = loop.epoch + 1, time.time()
    if parts.thaw(epoch):  # gradual: the backbone joins the optimizer, the EMA and DDP
        run.net = parts.wrap(parts.trained)
    train_loss, images_per_s = train_one_epoch(
        run.net,
        parts.loaders["train"],
        parts.stepper,
        run.loggers,
        cfg,
        loop,
        run.stop,
        lambda loss: save_mid_epoch(run, loss),
    )
    samples = prediction_samples(run)
    val = validate(run, samples)
    loop.epoch, loop.step_in_epoch, loop.epoch_loss_sum = epoch, 0, 0.0
    # Before the checkpoint, which keeps its state; a missing monitor is named by the save.
    stop_early = run.stopper.step(val[cfg.monitor]) if cfg.monitor in val else False
    row = {
        "epoch": epoch,
        "step": loop.global_step,
        "train/loss": train_loss,
        **val,
        "lr": parts.stepper.optimizer.param_groups[0]["lr"],
        "images_per_s": images_per_s,
        "epoch_time_s": time.time() - epoch_start,
    }
    # The row goes first: a crash between the two leaves a row that a resume trims, never a
    # checkpoint whose epoch has no row.
    run.loggers.log_epoch(row)
    is_best = save_epoch(run, train_loss, val)
    record_epoch(run, row, samples, is_best)
    report_to_sweeper(epoch, val[cfg.monitor])  # an Optuna pruner may stop this trial
    return stop_early


def validate(run: Run, samples: Predictions | None) -> dict[str, float]:
    """val/* metrics of the trained weights, and val_ema/* of the EMA weights when there are."""
    parts, limit = run.parts, run.cfg.trainer.limit_val_batches
    stepper, loader = parts.stepper, parts.loaders["val"]
    val = evaluate(
        run.net,
        loader,
        parts.task,
        run.metrics,
        stepper.device,
        "val",
        limit,
        samples,
        stepper.dtype,
    )
    if stepper.ema is not None:
        # The EMA of the whole model, or of the head alone when it trains on cached features
        # (under DDP, run.net is a wrapper, never the model itself).
        on_features = parts.trained is not parts.model
        ema_model = stepper.ema.module
        ema = ema_model.get_submodule(parts.model_info.head[0]) if on_features else ema_model
        ema_val = evaluate(
            ema, loader, parts.task, run.metrics, stepper.device, "val", limit, None, stepper.dtype
        )
        val.update({k.replace("val/", EMA_PREFIX): v for k, v in ema_val.items()})
    return val


def prediction_samples(run: Run) -> Predictions | None:
    """A collector for the validation pictures: on the plain model only (cached features are
    no images; a compiled or DDP-wrapped model keeps its hooks to itself)."""
    if run.net is not run.parts.model:
        return None
    prep = run.parts.prep
    return run.loggers.predictions(run.parts.model, run.parts.task, prep.mean, prep.std)


def save_epoch(run: Run, train_loss: float, val: dict[str, float]) -> bool:
    """last.pt, and best/top-k when the monitor improved (rank 0); True when this is best."""
    is_best = False
    if run.rank.is_main:
        metadata = checkpoint_metadata(run)
        state = state_of(run, train_loss, val)
        is_best = run.checkpointer.save(state, run.parts.model, val, metadata)
    barrier()
    return is_best


def save_mid_epoch(run: Run, loss: float) -> None:
    """A step checkpoint, or the save before stopping on a signal (no metrics: no best/top-k)."""
    if run.rank.is_main:
        run.checkpointer.save_last(state_of(run, loss, {}))
    barrier()
