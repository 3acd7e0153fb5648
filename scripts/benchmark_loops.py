"""What each row of scripts/benchmark.py trains: the setup a run builds, and two loops over it.

`bare_loop` is the loop anyone would write by hand; `project_loop` is the run's own
`train_one_epoch`. Both get the objects `build_parts` builds from the real YAML defaults, so a
ratio between them is the cost of the project's loop alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from finetune.engine.build import build_parts
from finetune.engine.distributed import dist_info
from finetune.engine.loop import LoopState, Stepper, train_one_epoch
from finetune.engine.setup import check_config, pick_device, seed_everything
from finetune.records.loggers import Loggers, build_loggers
from finetune.resolvers import register_resolvers
from finetune.safety.signals import StopRequest

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class Setup:
    """Everything one variant trains with, built from the composed config."""

    cfg: DictConfig
    net: nn.Module  # what the loop trains (the model, or its head on cached features)
    loader: DataLoader
    stepper: Stepper  # optimizer, scheduler, device, precision, EMA
    loggers: Loggers
    loop: LoopState = field(default_factory=LoopState)


@dataclass
class Variant:
    """A row of the table: `loop(setup, steps)` trains `steps` steps."""

    name: str
    loop: Callable[[Setup, int], None]
    overrides: Sequence[str] = field(default_factory=tuple)


def compose_config(
    model: str, batch_size: int, image_size: int, overrides: Sequence[str]
) -> DictConfig:
    """The real YAML defaults, as `python train.py model=MODEL ...` would compose them.

    Pretrained weights do not change the speed, so they are off: no hub lookup, no download.
    """
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"model={model}",
                "model.pretrained=false",
                f"data.batch_size={batch_size}",
                f"data.image_size={image_size}",
                *overrides,
            ],
        )


def build_setup(cfg: DictConfig, log_dir: Path) -> Setup:
    """What a run builds before its first epoch (one process, no DDP):
    the same `build_parts`, so the benchmark times the objects a run trains with."""
    check_config(cfg)
    device = pick_device(cfg.trainer.device)
    seed_everything(cfg.seed)
    parts = build_parts(cfg, device, dist_info())
    loggers = build_loggers(cfg, log_dir, is_main=True)
    return Setup(cfg, parts.net, parts.loaders["train"], parts.stepper, loggers)


def bare_loop(s: Setup, steps: int) -> None:
    """The loop anyone would write by hand: forward, loss, zero_grad, backward, step.

    It uses the setup's model, data, optimizer and scheduler only (fp32, no accumulation,
    clipping or EMA): the baseline that the project's extras are measured against.
    """
    model, device = s.net, s.stepper.device
    optimizer, scheduler = s.stepper.optimizer, s.stepper.scheduler
    model.train()
    criterion = nn.CrossEntropyLoss()
    done = 0
    while done < steps:
        for images, targets in s.loader:
            images, targets = images.to(device), targets.to(device)
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            done += 1
            if done == steps:
                break


def project_loop(s: Setup, steps: int) -> None:
    """This project's `train_one_epoch`, one call per pass over the loader, loggers on."""
    stop = StopRequest()  # the run's signal handlers, as in `train.run`
    try:
        while steps > 0:
            s.cfg.trainer.limit_train_batches = min(steps, len(s.loader))
            train_one_epoch(
                s.net,
                s.loader,
                s.stepper,
                s.loggers,
                s.cfg,
                s.loop,
                stop,
                save_mid_epoch=lambda loss: None,  # checkpoint.every_n_steps is null by default
            )
            steps -= s.cfg.trainer.limit_train_batches
            s.loop.epoch, s.loop.step_in_epoch, s.loop.epoch_loss_sum = s.loop.epoch + 1, 0, 0.0
    finally:
        stop.close()
