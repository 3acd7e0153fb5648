"""The inner loop: one epoch of training, one pass of evaluation.

Kept beside train.py's `run()` (which calls them in plain sight) so that each file reads in one
sitting. One optimizer step is `trainer.accumulate_grad_batches` batches, under autocast when
`trainer.precision` asks for it, with clipping, a GradScaler (fp16 on CUDA) and an EMA update.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from finetune.engine.distributed import all_reduce_sum, any_rank, dist_info
from finetune.engine.precision import autocast
from finetune.records.loggers import Loggers
from finetune.records.predictions import Predictions
from finetune.records.progress import ProgressBar
from finetune.safety.errors import FinetuneError
from finetune.safety.faults import NonFiniteWatch
from finetune.safety.injection import PlannedSignal
from finetune.safety.signals import StopRequest
from finetune.tasks.base import Task

if TYPE_CHECKING:
    from finetune.tasks.base import EpochMetrics


@dataclass
class LoopState:
    """Where the loop is: what a checkpoint must hold to continue bitwise."""

    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimizer steps taken
    step_in_epoch: int = 0  # optimizer steps of epoch+1 already taken (mid-epoch checkpoint)
    epoch_loss_sum: float = 0.0  # sum of those steps' losses


@dataclass
class Stepper:
    """What one optimizer step needs besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    scaler: torch.amp.GradScaler | None
    ema: Any | None  # timm.utils.ModelEmaV3
    ema_source: nn.Module | None  # the unwrapped model the EMA follows
    task: Task  # how a batch goes in and what its targets are
    criterion: nn.Module  # the training loss (cfg.loss), on the device
    mix: Any | None = None  # finetune.data.augment.BatchMixer: mixup/cutmix, soft targets


def steps_in_epoch(loader: DataLoader, trainer: DictConfig) -> int:
    """Optimizer steps of one epoch: whole groups of `accumulate_grad_batches` batches."""
    batches = loader.sampler.full_batches(loader)
    if trainer.limit_train_batches is not None:
        batches = min(batches, trainer.limit_train_batches)
    steps = batches // trainer.accumulate_grad_batches
    if steps == 0:
        raise FinetuneError(
            f"one optimizer step needs {trainer.accumulate_grad_batches} batches but an epoch has "
            f"{batches}; lower trainer.accumulate_grad_batches or data.batch_size"
        )
    return steps


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    stepper: Stepper,
    loggers: Loggers,
    cfg: DictConfig,
    loop: LoopState,
    stop: StopRequest,
    save_mid_epoch: Callable[[float], None],
) -> tuple[float, float]:
    """One pass over the training data; returns (mean loss over ranks, images/s of this rank).

    The loss stays on the device and is read (a host sync) only every `log_every_n_steps`.
    The data order is a function of (seed, epoch), so a resumed epoch skips what was done.
    """
    trainer, device, task = cfg.trainer, stepper.device, stepper.task
    accumulate, distributed = trainer.accumulate_grad_batches, dist_info().enabled
    steps = start_epoch(model, loader, trainer, loop)
    loss_sum = torch.tensor(loop.epoch_loss_sum, device=device)
    watch = NonFiniteWatch(device)  # the first step whose loss is NaN or inf
    planned = PlannedSignal()  # tests only: a signal at a chosen step
    images_seen, start = 0, time.perf_counter()
    bar = ProgressBar(steps, f"epoch {loop.epoch + 1}", trainer.progress_bar, loop.step_in_epoch)
    batches_done = loop.step_in_epoch * accumulate  # skipped on a mid-epoch resume
    for batch, data in enumerate(loader, start=1):
        if loop.step_in_epoch >= steps:
            break
        images, targets = task.inputs_and_targets(data, device, trainer.channels_last)
        if stepper.mix is not None:  # seeded by (epoch, batch): the same on resume
            images, targets = stepper.mix(images, targets, loop.epoch + 1, batches_done + batch)
        steps_now = batch % accumulate == 0
        no_sync = distributed and not steps_now
        loss = forward_backward(model, images, targets, stepper, accumulate, batch, no_sync)
        loss_sum += loss.detach()
        watch.see(loss, loop.global_step + 1)  # no sync: read on log steps and before saves
        images_seen += images.shape[0]
        if not steps_now:
            continue
        optimizer_step(model, stepper, trainer.grad_clip, loop.global_step)
        loop.global_step += 1
        loop.step_in_epoch += 1
        planned.after_step(loop.global_step)
        log_step = loop.global_step % trainer.log_every_n_steps == 0
        if log_step:
            rate = images_seen / (time.perf_counter() - start)
            log_train_step(loggers, bar, watch, loss * accumulate, rate, loop.global_step, task)
        bar.advance()
        # Ranks must stop at the same step; agreeing costs a collective, so only on log steps.
        stopping = any_rank(stop.requested, device) if log_step or not distributed else False
        if stopping or due(loop.global_step, cfg.checkpoint.every_n_steps):
            save_mid_epoch_now(model, loop, loss_sum, watch, save_mid_epoch)
        if stopping:
            bar.close()
            raise stop.stopped_or_peer()
        if loop.step_in_epoch >= steps:
            break  # now, not at the top: loading (and augmenting) one more batch is wasted work
    bar.close()
    watch.check(model)  # before the epoch's checkpoint is written
    mean_loss = all_reduce_sum(loss_sum / steps).item() / dist_info().world_size
    return mean_loss, images_seen / max(time.perf_counter() - start, 1e-9)


def due(step: int, every: int | None) -> bool:
    """Whether `step` is one of every `every` steps (None: never)."""
    return bool(every) and step % every == 0


def start_epoch(model: nn.Module, loader: DataLoader, trainer: DictConfig, loop: LoopState) -> int:
    """Training mode, and epoch `loop.epoch + 1`'s batches in order, less those a mid-epoch
    resume has done; returns the epoch's optimizer steps."""
    model.train()
    steps = steps_in_epoch(loader, trainer)
    skip = loop.step_in_epoch * trainer.accumulate_grad_batches
    loader.sampler.set_epoch(loop.epoch + 1, skip_batches=skip, batch_size=loader.batch_size)
    return steps


def save_mid_epoch_now(
    model: nn.Module,
    loop: LoopState,
    loss_sum: torch.Tensor,
    watch: NonFiniteWatch,
    save_mid_epoch: Callable[[float], None],
) -> None:
    """A checkpoint inside the epoch (every_n_steps, or a stop): the loss so far goes with it."""
    loop.epoch_loss_sum = loss_sum.item()
    watch.check(model)  # never a checkpoint from NaN weights
    save_mid_epoch(loop.epoch_loss_sum / loop.step_in_epoch)


def forward_backward(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    stepper: Stepper,
    accumulate: int,
    batch: int,
    no_sync: bool = False,
) -> torch.Tensor:
    """The loss of one batch (scaled for accumulation), its gradients added to the model's.

    `no_sync`: a DDP model's backward skips its all-reduce (a batch between optimizer steps:
    reducing there is wasted work)."""
    with model.no_sync() if no_sync else contextlib.nullcontext():
        with autocast(stepper.device, stepper.dtype):
            loss = stepper.criterion(model(images), targets) / accumulate
        zero_grad_if_first(stepper.optimizer, accumulate, batch)
        (stepper.scaler.scale(loss) if stepper.scaler else loss).backward()
    return loss


def zero_grad_if_first(optimizer: torch.optim.Optimizer, accumulate: int, batch: int) -> None:
    """Drop the last step's gradients at the first batch of a step."""
    if (batch - 1) % accumulate == 0:
        # The last step's gradients go only now, while this forward's activations hold the
        # heap, so the allocator reuses their memory. Freed right after the step, they went back
        # to the OS and returned as page faults (~4% of a resnet18 step on CPU, see
        # scripts/benchmark.py); kept, they also feed the epoch's histograms.
        optimizer.zero_grad(set_to_none=True)


def log_train_step(
    loggers: Loggers,
    bar: ProgressBar,
    watch: NonFiniteWatch,
    step_loss: torch.Tensor,
    images_per_s: float,
    step: int,
    task: Task,
) -> None:
    """The step's scalars (train/images_per_s counts samples of any kind); the bar's postfix.

    Reading the loss is the step's one host sync, so the NaN watch is checked here too."""
    watch.check()
    loss = step_loss.item()
    loggers.log_metrics({"train/loss": loss, "train/images_per_s": images_per_s}, step)
    bar.show(**{"loss": f"{loss:.4f}", task.rate_unit: f"{images_per_s:.0f}"})


def optimizer_step(model: nn.Module, stepper: Stepper, grad_clip: float | None, step: int) -> None:
    """Clip, step (through the scaler for fp16), advance LR and EMA.

    The gradients stay until the next step's first backward (see train_one_epoch).
    """
    optimizer, scaler = stepper.optimizer, stepper.scaler
    if grad_clip:
        if scaler is not None:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    stepper.scheduler.step()
    if stepper.ema is not None:
        stepper.ema.update(stepper.ema_source, step=step)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    task: Task,
    metrics: EpochMetrics,
    device: torch.device,
    prefix: str,
    limit_batches: int | None,
    predictions: Predictions | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Loss and metrics over a split (all ranks' shards together), named `prefix/name`.

    `predictions`, when given, keeps each batch's outputs for the loggers' pictures.
    """
    model.eval()
    metrics.reset()
    totals = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, sample count
    for batch, data in enumerate(loader):
        if limit_batches is not None and batch >= limit_batches:
            break
        images, targets = task.inputs_and_targets(data, device, channels_last=False)
        with autocast(device, dtype):
            logits = model(images).float()
        totals[0] += task.loss_sum(logits, targets)
        totals[1] += targets.shape[0]
        probabilities = task.probabilities(logits)
        metrics.update(probabilities, task.metric_targets(targets))
        if predictions is not None:
            predictions.update(images, targets, probabilities, task.decisions(probabilities))
    results = {f"{prefix}/{k}": float(v) for k, v in metrics.compute().items()}  # synced
    loss_sum, count = all_reduce_sum(totals).tolist()
    return {f"{prefix}/loss": loss_sum / max(1, count), **results}
