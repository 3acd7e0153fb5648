"""The LR range test (Smith 2015; fastai's lr_find): a suggested learning rate for this run.

Train the configured model, data and freeze policy for `lr_find.num_steps` steps while the
learning rate grows exponentially from `lr_find.start_lr` to `lr_find.end_lr`, and record the
smoothed loss. The suggestion (`lr_find.rule`) is by default a tenth of the LR at the lowest
smoothed loss (`minimum`, fastai's lr_min): the lowest loss is where training stops improving,
and a tenth of it sits on the descent, safely below divergence. `steepest`, the LR where the
loss falls fastest against log LR (torch-lr-finder's rule), often lands in the noisy early part
of the curve or near its edge: on the default experiment it suggested 0.2 for AdamW, which
does not train. A run takes the suggestion directly:
`python train.py optimizer.lr=find`, or `optimizer.lr=<suggestion>` after
`python scripts/lr_find.py`. The model and optimizer are built afresh for the test and thrown
away, so the run that follows starts from the same weights it would have without it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from finetune.engine.distributed import DistInfo, broadcast_from_main
from finetune.engine.precision import autocast
from finetune.safety.atomic import write_text
from finetune.safety.errors import FinetuneError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PLOT = "lr_find.png"
CURVE = "lr_find.json"
# Points left out of the suggestion at either end: the start is noise, the end diverges.
SKIP_START, SKIP_END = 10, 5
RULES = ("minimum", "steepest")


@dataclass
class RangeTest:
    """Learning rates tried, their smoothed losses, and the suggested LR."""

    lrs: list[float]
    losses: list[float]
    suggestion: float


def check_lr_find(cfg: DictConfig) -> None:
    """Bounds that make a range test: 0 < start < end, enough steps, smoothing in [0, 1)."""
    find = cfg.lr_find
    if find.rule not in RULES:
        raise FinetuneError(f"lr_find.rule={find.rule} must be one of {', '.join(RULES)}")
    if not 0 < find.start_lr < find.end_lr:
        raise FinetuneError(
            f"lr_find.start_lr={find.start_lr} and lr_find.end_lr={find.end_lr} must satisfy "
            "0 < start_lr < end_lr"
        )
    if find.num_steps < SKIP_START + SKIP_END + 2:
        raise FinetuneError(
            f"lr_find.num_steps={find.num_steps} must be at least {SKIP_START + SKIP_END + 2}"
        )
    if not 0 <= find.smoothing < 1:
        raise FinetuneError(f"lr_find.smoothing={find.smoothing} must be in [0, 1)")


def range_test(cfg: DictConfig, device: torch.device, rank: DistInfo) -> RangeTest:
    """Build the run's parts at start_lr, sweep the LR up, and suggest one (same on all ranks)."""
    from finetune.engine.build import build_parts

    check_lr_find(cfg)
    probe = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    probe.optimizer.lr = float(cfg.lr_find.start_lr)
    parts = build_parts(probe, device, rank)
    # The unwrapped module: each rank tests on its own shard, with no collective to agree on.
    result = sweep_lr(parts.trained, parts.loaders["train"], parts.stepper, cfg.lr_find)
    result.suggestion = float(broadcast_from_main(result.suggestion))
    return result


def resolve_lr(cfg: DictConfig, device: torch.device, rank: DistInfo) -> RangeTest | None:
    """`optimizer.lr=find`: run the range test and put its suggestion in the config.

    The global generators are seeded again afterwards, so the run is the one that
    `optimizer.lr=<suggestion>` would be, and its saved config holds the number.
    """
    if cfg.optimizer.lr != "find":
        return None
    from finetune.engine.setup import seed_everything

    result = range_test(cfg, device, rank)
    cfg.optimizer.lr = result.suggestion
    log.info("LR range test: optimizer.lr=%.3g (of %d steps)", result.suggestion, len(result.lrs))
    seed_everything(cfg.seed)
    return result


def sweep_lr(model: nn.Module, loader, stepper, find: DictConfig) -> RangeTest:  # noqa: ANN001
    """The exponential sweep itself; stops early once the loss exceeds `diverge` x its best.

    Each step is the run's own: the task's inputs and targets, the batch mixing of the
    augmentation recipe, the configured loss.
    """
    optimizer = stepper.optimizer
    base = [group["lr"] / find.start_lr for group in optimizer.param_groups]  # per-group mults
    ratio = (find.end_lr / find.start_lr) ** (1 / (find.num_steps - 1))
    model.train()
    lrs: list[float] = []
    raw: list[float] = []
    smoothed, best = 0.0, math.inf
    for epoch, batch in endless(loader):
        lr = find.start_lr * ratio ** len(lrs)
        for group, mult in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr * mult
        images, targets = stepper.task.inputs_and_targets(batch, stepper.device, False)
        if stepper.mix is not None:
            images, targets = stepper.mix(images, targets, epoch, len(lrs) + 1)
        with autocast(stepper.device, stepper.dtype):
            loss = stepper.criterion(model(images).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        smoothed = value if not lrs else find.smoothing * value + (1 - find.smoothing) * smoothed
        lrs.append(lr)
        raw.append(value)
        best = min(best, smoothed)
        diverged = not math.isfinite(smoothed) or smoothed > find.diverge * best
        if diverged or len(lrs) >= find.num_steps:
            break
    losses = centred(raw, find.window)
    return RangeTest(lrs, losses, suggest(lrs, losses, find.rule))


def endless(loader):  # noqa: ANN001, ANN201
    """(epoch, batch) over as many epochs as the sweep needs, each epoch's order seeded."""
    epoch = 0
    while True:
        epoch += 1
        loader.sampler.set_epoch(epoch)
        yield from ((epoch, batch) for batch in loader)


def centred(values: list[float], half_window: int) -> list[float]:
    """Each loss as the mean of those within `half_window` steps on either side.

    The running average that stops a diverging sweep lags: with lr_find.smoothing=0.05 it
    trails the raw loss by about 20 steps, two decades of LR at 100 steps, so its lowest point
    sits where the raw loss already climbs. A centred window smooths as much without the shift.
    Non-finite losses (the diverged end) are left out of every mean.
    """
    smoothed = []
    for i in range(len(values)):
        window = values[max(0, i - half_window) : i + half_window + 1]
        finite = [v for v in window if math.isfinite(v)]
        smoothed.append(sum(finite) / len(finite) if finite else math.inf)
    return smoothed


def suggest(lrs: list[float], losses: list[float], rule: str) -> float:
    """The suggested LR by `rule` (module docstring), from the smoothed losses.

    Too short a sweep (it diverged at once) suggests the lowest LR tried, with a warning.
    """
    end = len(losses) - SKIP_END
    if end - SKIP_START < 2:
        log.warning("the LR range test diverged within %d steps; lower lr_find.start_lr", end)
        return lrs[0]
    if rule == "minimum":
        lowest = min(range(SKIP_START, end), key=losses.__getitem__)
        return lrs[lowest] / 10
    logs = [math.log10(lr) for lr in lrs]
    slopes = [
        (losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1])
        for i in range(SKIP_START, end - 1)
    ]
    steepest = min(range(len(slopes)), key=slopes.__getitem__)
    return lrs[SKIP_START + steepest]


def plot(result: RangeTest, title: str) -> Figure:
    """Loss against LR (log scale) with the suggestion marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.subplots()
    axes.plot(result.lrs, result.losses)
    axes.set_xscale("log")
    axes.axvline(result.suggestion, color="tab:red", linestyle="--")
    axes.annotate(
        f"suggested lr {result.suggestion:.2e}",
        (result.suggestion, max(result.losses)),
        color="tab:red",
        ha="left",
        va="top",
    )
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss (smoothed)")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def record(result: RangeTest, cfg: DictConfig, run_dir: Path, loggers) -> Path:  # noqa: ANN001
    """lr_find.png and lr_find.json in the run directory; the plot in TensorBoard/W&B.

    The curve is a picture and a file, not scalars at steps 0..N: W&B drops every point logged
    at a step below one it has seen, so the run's own first N steps would vanish from it.
    """
    figure = plot(result, f"LR range test: {cfg.model.name}, freeze={cfg.freeze.policy}")
    path = run_dir / PLOT
    figure.savefig(path)
    curve = {"suggestion": result.suggestion, "lrs": result.lrs, "losses": result.losses}
    write_text(run_dir / CURVE, json.dumps(curve, indent=1) + "\n")
    loggers.log_figure("lr_find/plot", figure, 0)
    return path
