"""One training run, top to bottom: build, train, evaluate, record, test.

`run(cfg)` is the whole flow; `train_one_epoch` and `evaluate` sit beside it. Logging and
checkpointing are called inline in the loop, in plain sight.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection

from finetune.checkpoint import FORMAT_VERSION, Checkpointer, model_state, rng_state
from finetune.data import build_loaders, build_splits, resolve_preprocessing
from finetune.errors import FinetuneError, one_line
from finetune.loggers import Loggers, build_loggers
from finetune.metrics import build_metrics
from finetune.models import build_model, count_parameters
from finetune.optim import param_groups
from finetune.progress import Progress, log_to_file_only
from finetune.rundir import write_hparams, write_summary
from finetune.setup import check_config, model_summary, pick_device, seed_everything
from finetune.weights import safe_torch_load

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> float:
    """Train, validate every epoch, test the best checkpoint; return the best monitored value."""
    started = time.time()
    run_dir = Path(cfg.paths.output_dir)
    summary: dict[str, Any] = {
        "status": "running",
        "run_dir": str(run_dir),
        "monitor": cfg.monitor,
        "mode": cfg.mode,
    }
    write_summary(run_dir, summary)
    try:
        best = train_and_test(cfg, run_dir, summary)
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt)
        summary["status"] = "interrupted" if interrupted else "failed"
        summary["error"] = None if interrupted else one_line(error)
        summary["wall_time_s"] = round(time.time() - started, 2)
        write_summary(run_dir, summary)
        raise
    summary["status"] = "completed"
    summary["wall_time_s"] = round(time.time() - started, 2)
    write_summary(run_dir, summary)
    log.info(
        "Done in %.1fs: test %s | run directory %s",
        summary["wall_time_s"],
        format_metrics(summary.get("test", {})),
        run_dir,
    )
    return best


def train_and_test(cfg: DictConfig, run_dir: Path, summary: dict[str, Any]) -> float:
    check_config(cfg)
    device = pick_device(cfg.trainer.device)
    seed_everything(cfg.seed)

    splits = build_splits(cfg.data, cfg.seed)
    model, model_info = build_model(cfg.model, num_classes=len(splits.class_names))
    prep = resolve_preprocessing(model, cfg.data.image_size)
    loaders = build_loaders(cfg.data, splits, prep, cfg.seed, device)
    model.to(device)

    # Parameter groups hold tensors, which Hydra cannot pass through a config: call a partial.
    make_optimizer = instantiate(cfg.optimizer, _partial_=True, _convert_="all")
    optimizer = make_optimizer(params=param_groups(model, cfg.optimizer.weight_decay))
    steps_per_epoch = limited(len(loaders["train"]), cfg.trainer.limit_train_batches)
    scheduler = instantiate(cfg.scheduler)(
        optimizer, steps_per_epoch=steps_per_epoch, epochs=cfg.trainer.epochs
    )
    metrics = build_metrics(len(splits.class_names)).to(device)
    loggers = build_loggers(cfg.logger, run_dir, is_main=True)
    checkpointer = Checkpointer(
        run_dir / cfg.checkpoint.dirname,
        cfg.monitor,
        cfg.mode,
        cfg.checkpoint.save_top_k,
        cfg.checkpoint.save_safetensors,
    )

    params = count_parameters(model)
    facts = {
        "device": str(device),
        "model": vars(model_info),
        "parameters": params,
        "preprocessing": prep.as_dict(),
        "classes": splits.class_names,
        "split_sizes": {k: len(v.dataset) for k, v in loaders.items()},
        "test_split": splits.test_source,
    }
    write_hparams(run_dir, cfg, facts)
    summary.update(pretrained=model_info.pretrained_source, classes=splits.class_names)
    log.info(
        "%s (%s) on %s: %d classes, %s parameters (%s trainable); %s",
        cfg.model.name,
        model_info.pretrained_source,
        device,
        len(splits.class_names),
        f"{params['total']:,}",
        f"{params['trainable']:,}",
        facts["split_sizes"],
    )
    log_to_file_only(model_summary(model, prep.image_size, device))
    metadata = {"model": cfg.model.name, "classes": ",".join(splits.class_names)}

    global_step = 0
    for epoch in range(1, cfg.trainer.epochs + 1):
        epoch_start = time.time()
        train_loss, global_step, images_per_s = train_one_epoch(
            model,
            loaders["train"],
            optimizer,
            scheduler,
            loggers,
            device,
            cfg.trainer,
            epoch,
            global_step,
        )
        val = evaluate(model, loaders["val"], metrics, device, "val", cfg.trainer.limit_val_batches)
        row = {
            "epoch": epoch,
            "step": global_step,
            "train/loss": train_loss,
            **val,
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": images_per_s,
            "epoch_time_s": time.time() - epoch_start,
        }
        loggers.log_epoch(row)
        loggers.log_metrics(
            {k: v for k, v in row.items() if k not in ("epoch", "step")}, global_step
        )
        state = {
            "epoch": epoch,
            "global_step": global_step,
            "model_state_dict": model_state(model),
            "optimizer_state_dict": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": None,
            "loss": train_loss,
            "metrics": val,
            "rng": rng_state(),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "wandb_run_id": None,
            "format_version": FORMAT_VERSION,
        }
        is_best = checkpointer.save(state, model, val, metadata)
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
        write_summary(run_dir, summary)

    best_state = safe_torch_load(Path(checkpointer.best["path"]))
    model.load_state_dict(best_state["model_state_dict"])
    test = evaluate(model, loaders["test"], metrics, device, "test", None)
    loggers.log_metrics(test, global_step)
    best_score = float(checkpointer.best["score"])
    loggers.log_hparams(flat_hparams(cfg), {cfg.monitor: best_score, **test})
    loggers.finish("completed")
    summary.update(
        test=test, test_split=splits.test_source, best_checkpoint=checkpointer.best["path"]
    )
    return best_score


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loggers: Loggers,
    device: torch.device,
    trainer: DictConfig,
    epoch: int,
    global_step: int,
) -> tuple[float, int, float]:
    """One pass over the training data; returns (mean loss, global step, images/s).

    The loss stays on the device and is read (a host sync) only every `log_every_n_steps`.
    """
    model.train()
    criterion = nn.CrossEntropyLoss()
    steps = limited(len(loader), trainer.limit_train_batches)
    loss_sum = torch.zeros((), device=device)
    images_seen, start = 0, time.perf_counter()
    progress = Progress(steps, f"epoch {epoch}", enabled=trainer.progress_bar)
    for step, (images, targets) in enumerate(loader):
        if step >= steps:
            break
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach()
        images_seen += images.shape[0]
        global_step += 1
        if global_step % trainer.log_every_n_steps == 0:
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FinetuneError(
                    f"loss is {loss_value} at step {global_step}; lower optimizer.lr or use "
                    "a warmup (scheduler=cosine)"
                )
            rate = images_seen / (time.perf_counter() - start)
            loggers.log_metrics({"train/loss": loss_value, "train/images_per_s": rate}, global_step)
            progress.show(loss=f"{loss_value:.4f}", img_s=f"{rate:.0f}")
        progress.advance()
    progress.close()
    elapsed = time.perf_counter() - start
    return (loss_sum / max(1, steps)).item(), global_step, images_seen / max(elapsed, 1e-9)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    metrics: MetricCollection,
    device: torch.device,
    prefix: str,
    limit_batches: int | None,
) -> dict[str, float]:
    """Loss and metrics over a split, as plain floats named `prefix/name`."""
    model.eval()
    metrics.reset()
    loss_sum = torch.zeros((), device=device)
    count = 0
    for batch, (images, targets) in enumerate(loader):
        if limit_batches is not None and batch >= limit_batches:
            break
        images, targets = images.to(device), targets.to(device)
        logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum")
        count += targets.shape[0]
        metrics.update(logits, targets)
    results = {f"{prefix}/{k}": float(v) for k, v in metrics.compute().items()}
    return {f"{prefix}/loss": float(loss_sum) / max(1, count), **results}


def limited(total: int, limit: int | None) -> int:
    return total if limit is None else min(total, limit)


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The hyper-parameters a sweep compares, flattened for TensorBoard's HParams tab."""
    chosen = {
        "model": cfg.model.name,
        "pretrained": str(cfg.model.pretrained),
        "data": cfg.data.name,
        "batch_size": cfg.data.batch_size,
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1],
        "lr": cfg.optimizer.lr,
        "weight_decay": cfg.optimizer.weight_decay,
        "scheduler": cfg.scheduler._target_.rsplit(".", 1)[-1],
        "epochs": cfg.trainer.epochs,
        "freeze": cfg.freeze.policy,
        "seed": cfg.seed,
    }
    return chosen
