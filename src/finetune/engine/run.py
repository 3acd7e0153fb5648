"""One training run, top to bottom: build, (resume), train, evaluate, record, test.

`run(cfg)` is the whole flow; `train_one_epoch` and `evaluate` (loop.py) are called inline in
the epoch loop, beside logging and checkpointing, in plain sight. Under torchrun every rank
runs this; only rank 0 writes files.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from finetune.engine.build import build_parts
from finetune.engine.checkpoint import FORMAT_VERSION, Checkpointer, model_state, rng_state
from finetune.engine.distributed import (
    barrier,
    broadcast_from_main,
    dist_info,
    quiet_other_ranks,
    rank_device,
)
from finetune.engine.loop import LoopState, evaluate, train_one_epoch
from finetune.engine.optim import add_param_groups
from finetune.engine.resume import load_resume_state, restore, trim_metrics_csv
from finetune.engine.rundir import read_summary, write_hparams, write_summary
from finetune.engine.setup import model_summary, pick_device, seed_everything
from finetune.engine.startup import StartupClock
from finetune.models.factory import count_parameters
from finetune.models.weights import load_exact, safe_torch_load
from finetune.records.loggers import build_loggers, flat_hparams
from finetune.records.progress import log_to_file_only
from finetune.safety.checks import check_config
from finetune.safety.errors import WriteFailed, one_line
from finetune.safety.faults import explain, fault_counts, status_of
from finetune.safety.signals import RunStopped, StopRequest
from finetune.sweep.pruning import report as report_to_sweeper
from finetune.tasks.metrics import build_metrics

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """Train, validate every epoch, test the best checkpoint; return the best monitored value."""
    started = time.time()
    run_dir = Path(cfg.paths.output_dir)
    cfg, resumed = load_resume_state(cfg, run_dir)
    summary = (read_summary(run_dir) or {}) if resumed else {}
    summary.update(status="running", run_dir=str(run_dir), monitor=cfg.monitor, mode=cfg.mode)
    summary.pop("error", None)
    is_main = dist_info().is_main
    if is_main:
        write_summary(run_dir, summary)
    else:
        quiet_other_ranks()
    stop = StopRequest()
    try:
        best = train_and_test(cfg, run_dir, summary, resumed, stop)
    except RunStopped as stopped:
        finish_summary(run_dir, summary, stopped.status, started)
        log.warning(
            "Run %s; last.pt is saved. Continue with: python train.py resume=%s", stopped, run_dir
        )
        stop.hand_over(stopped.signum)  # submitit: requeue the job (it continues by resume=auto)
        raise SystemExit(stopped.exit_code) from None
    except BaseException as error:
        fault = explain(error, cfg)  # out of memory, a dead worker, ...: one line with the fix
        interrupted = isinstance(error, KeyboardInterrupt)
        summary["error"] = None if interrupted else one_line(fault)
        finish_summary(run_dir, summary, status_of(fault), started)
        if interrupted:  # a second Ctrl-C: stopped at once, mid-step
            log.warning(
                "Interrupted again: stopped at once; the last saved last.pt is whole. "
                "Continue with: python train.py resume=%s",
                run_dir,
            )
            raise SystemExit(128 + signal.SIGINT) from None
        if fault is not error:
            raise fault from None
        raise
    finally:
        stop.close()
    finish_summary(run_dir, summary, "completed", started)
    log.info(
        "Done in %.1fs: %s | run directory %s",
        time.time() - started,
        format_metrics(summary["test"]),
        run_dir,
    )
    return best


def finish_summary(run_dir: Path, summary: dict[str, Any], status: str, started: float) -> None:
    if not dist_info().is_main:
        return
    summary["status"] = status
    summary["wall_time_s"] = round(summary.get("wall_time_s_before", 0) + time.time() - started, 2)
    write_summary(run_dir, summary)


def train_and_test(
    cfg: DictConfig,
    run_dir: Path,
    summary: dict[str, Any],
    resumed: dict[str, Any] | None,
    stop: StopRequest,
) -> float:
    clock = StartupClock("imports")  # python, torch, Hydra's config: all before this line
    check_config(cfg)
    rank = dist_info()
    device = rank_device(cfg.trainer.device, rank) or pick_device(cfg.trainer.device)
    seed_everything(cfg.seed)
    torch.autograd.set_detect_anomaly(cfg.trainer.detect_anomaly)  # the op that made a NaN

    parts = build_parts(cfg, device, rank, clock)
    model, splits, prep, loaders = parts.model, parts.splits, parts.prep, parts.loaders
    net, freezer, stepper = parts.net, parts.freezer, parts.stepper
    optimizer, scheduler, ema = stepper.optimizer, stepper.scheduler, stepper.ema
    metrics = build_metrics(len(splits.class_names)).to(device)
    checkpointer = Checkpointer(
        run_dir / cfg.checkpoint.dirname,
        cfg.monitor,
        cfg.mode,
        cfg.checkpoint.save_top_k,
        cfg.checkpoint.save_safetensors,
        cfg.checkpoint.on_error,
    )
    loop = LoopState()
    if resumed is not None:
        loop = LoopState(**resumed["loop"])
        # Thaw as the saved run had by then, so the optimizer has the same groups.
        for epoch in range(2, loop.epoch + 1 + (loop.step_in_epoch > 0)):
            add_param_groups(optimizer, scheduler, parts.trainable_groups(freezer.apply(epoch)))
        restore(resumed, model, stepper, checkpointer)
        trim_metrics_csv(run_dir / "metrics.csv", loop.epoch)
        summary["wall_time_s_before"] = summary.get("wall_time_s", 0)
    loggers = build_loggers(
        cfg,
        run_dir,
        is_main=rank.is_main,
        wandb_run_id=resumed["wandb_run_id"] if resumed is not None else None,
        resume_step=loop.global_step if resumed is not None else None,
    )

    params = count_parameters(model)
    if resumed is None and rank.is_main:
        facts = {
            "device": str(device),
            "world_size": rank.world_size,
            "model": asdict(parts.model_info),
            "parameters": params,
            "preprocessing": prep.as_dict(),
            "classes": splits.class_names,
            "split_sizes": {k: len(v.dataset) for k, v in loaders.items()},
            "test_split": splits.test_source,
        }
        write_hparams(run_dir, cfg, facts)
        log_to_file_only(model_summary(model, prep.image_size, device))
    summary.update(pretrained=parts.model_info.pretrained_source, classes=splits.class_names)
    log.info(
        "%s (%s) on %s: %d classes, %s parameters (%s trainable); %d train images",
        cfg.model.name,
        parts.model_info.pretrained_source,
        device,
        len(splits.class_names),
        f"{params['total']:,}",
        f"{params['trainable']:,}",
        len(splits.train),
    )
    metadata = {"model": cfg.model.name, "classes": ",".join(splits.class_names)}

    def checkpoint_state(loss: float, val: dict[str, float]) -> dict[str, Any]:
        """The classic PyTorch checkpoint dict, plus what an exact resume needs."""
        return {
            "epoch": loop.epoch,
            "model_state_dict": model_state(model),
            "optimizer_state_dict": optimizer.state_dict(),
            "loss": loss,
            "scheduler": scheduler.state_dict(),
            "scaler": stepper.scaler.state_dict() if stepper.scaler else None,
            "ema_state_dict": model_state(ema.module) if ema else None,
            "global_step": loop.global_step,
            "loop": asdict(loop),
            "rng": rng_state(),
            "metrics": val,
            "classes": splits.class_names,
            "freeze": {"policy": cfg.freeze.policy, "frozen_stages": freezer.frozen},
            "config": OmegaConf.to_container(cfg, resolve=True),
            "wandb_run_id": loggers.wandb_run_id,
            "format_version": FORMAT_VERSION,
        }

    def save_mid_epoch(loss: float) -> None:
        if rank.is_main:
            checkpointer.save_last(checkpoint_state(loss, {}))
        barrier()

    clock.mark("setup")
    clock.stop_at_first_step(optimizer, summary)  # compile and the first batch count here
    while loop.epoch < cfg.trainer.epochs:
        epoch = loop.epoch + 1
        epoch_start = time.time()
        thawed = freezer.apply(epoch)  # gradual: the backbone joins the optimizer
        if thawed:
            add_param_groups(optimizer, scheduler, parts.trainable_groups(thawed))
            net = parts.wrap(parts.trained)
        train_loss, images_per_s = train_one_epoch(
            net, loaders["train"], stepper, loggers, cfg, loop, stop, save_mid_epoch
        )
        # Pictures of predictions need images, which cached features are not.
        samples = (
            None
            if net is not model
            else loggers.predictions(model, splits.class_names, prep.mean, prep.std)
        )
        val = evaluate(
            net,
            loaders["val"],
            metrics,
            device,
            "val",
            cfg.trainer.limit_val_batches,
            samples,
            stepper.dtype,
        )
        if ema is not None:  # the EMA weights, judged beside the raw ones
            ema_net = ema.module if net is model else ema.module.get_classifier()
            ema_val = evaluate(
                ema_net,
                loaders["val"],
                metrics,
                device,
                "val",
                cfg.trainer.limit_val_batches,
                None,
                stepper.dtype,
            )
            val.update({k.replace("val/", "val_ema/"): v for k, v in ema_val.items()})
        loop.epoch, loop.step_in_epoch, loop.epoch_loss_sum = epoch, 0, 0.0
        row = {
            "epoch": epoch,
            "step": loop.global_step,
            "train/loss": train_loss,
            **val,
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": images_per_s,
            "epoch_time_s": time.time() - epoch_start,
        }
        # The row goes first: a crash between the two leaves a row that a resume trims, never a
        # checkpoint whose epoch has no row.
        loggers.log_epoch(row)
        is_best = False
        if rank.is_main:
            is_best = checkpointer.save(checkpoint_state(train_loss, val), model, val, metadata)
        barrier()
        # train/loss is the step loss in the scalar logs; the epoch's mean gets its own tag.
        scalars = {k: v for k, v in row.items() if k not in ("epoch", "step", "train/loss")}
        loggers.log_metrics({"train/loss_epoch": train_loss, **scalars}, loop.global_step)
        loggers.log_predictions(samples, epoch, loop.global_step)  # image grid, confusion matrix
        loggers.log_histograms(model, epoch, loop.global_step)  # the last step's .grad: no sync
        log.info(
            "epoch %d/%d | train/loss %.4f | %s | lr %.2e | %.0f img/s | %.1fs%s",
            epoch,
            cfg.trainer.epochs,
            train_loss,
            format_metrics(val),
            row["lr"],
            images_per_s,
            row["epoch_time_s"],
            " | best" if is_best else "",
        )
        summary.update(best=checkpointer.best, final=row, epochs_done=epoch)
        summary.update(fault_counts(checkpointer, splits))  # failed saves, skipped images
        if rank.is_main:
            write_summary(run_dir, summary)
        report_to_sweeper(epoch, val[cfg.monitor])  # an Optuna pruner may stop this trial
        if stop.requested:
            raise stop.stopped()

    best_path = broadcast_from_main(checkpointer.best["path"])
    if best_path is None:  # every save failed, under checkpoint.on_error=warn
        raise WriteFailed("no checkpoint could be saved in this run; free disk space, run again")
    load_exact(model, safe_torch_load(Path(best_path))["model_state_dict"], best_path)
    test = evaluate(net, loaders["test"], metrics, device, "test", None, None, stepper.dtype)
    loggers.log_metrics(test, loop.global_step)
    best_score = float(broadcast_from_main(checkpointer.best["score"]))
    final = {k: v for k, v in summary["final"].items() if k.startswith(("train/", "val/"))}
    loggers.log_hparams(flat_hparams(cfg), {**final, f"best/{cfg.monitor}": best_score, **test})
    loggers.log_checkpoint(Path(best_path), metadata)
    loggers.finish("completed")
    summary.update(
        test=test, test_split=splits.test_source, best_checkpoint=checkpointer.best["path"]
    )
    summary.update(fault_counts(checkpointer, splits))
    return best_score


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
