"""What a run trains with, built from its config: data, model, freezing, optimizer, precision.

One function for `finetune.engine.run` and `scripts/benchmark.py`, so that the benchmark times the
very objects a run trains with. The order matters: freezing happens before the optimizer sees
the parameters and before compile and DDP wrap the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from finetune.data import Preprocessing, Splits, build_splits
from finetune.data.augment import batch_mixer, check_mixing
from finetune.engine.distributed import DistInfo, wrap_ddp
from finetune.engine.ema import build_ema, follow_structure
from finetune.engine.loop import Stepper, steps_in_epoch
from finetune.engine.optim import add_param_groups, build_optimizer, param_groups
from finetune.engine.precision import autocast_dtype, grad_scaler, maybe_compile
from finetune.engine.startup import StartupClock, mark
from finetune.models.factory import ModelInfo
from finetune.models.features import check_cache_features, feature_loaders
from finetune.models.freeze import Freezer, check_freeze
from finetune.models.lora import add_lora, report_share
from finetune.tasks.base import Task, build_task


@dataclass
class Parts:
    """The objects of one run, before its first epoch."""

    cfg: DictConfig
    device: torch.device
    splits: Splits
    task: Task
    model: nn.Module  # unwrapped: what checkpoints, the EMA and the pictures use
    model_info: ModelInfo
    prep: Preprocessing
    loaders: dict[str, DataLoader]
    freezer: Freezer
    trained: nn.Module  # what the loop trains: the model, or its head on cached features
    net: nn.Module  # `trained`, compiled and DDP-wrapped as the config asks
    stepper: Stepper  # optimizer, scheduler, precision, EMA

    def wrap(self, module: nn.Module) -> nn.Module:
        """compile, then DDP (again after a thaw, so DDP syncs the new parameters)."""
        return wrap(module, self.cfg, self.device)

    def trainable_groups(self, params: list[nn.Parameter]) -> list[dict[str, Any]]:
        """Optimizer groups of the trainable `params`: head and backbone LR, no decay on norms."""
        return trainable_groups(self.cfg, self.freezer, params)

    def thaw(self, epoch: int) -> bool:
        """Move the freezing policy to `epoch`; True when it thawed something.

        Thawed parameters join the optimizer and its schedule, and the EMA copy takes the
        model's new structure (engine/ema.py). The caller re-wraps `trained` (DDP registers
        the parameters that need gradients when it is built), once, after its last thaw.
        """
        thawed = self.freezer.apply(epoch)
        if not thawed:
            return False
        add_param_groups(
            self.stepper.optimizer, self.stepper.scheduler, self.trainable_groups(thawed)
        )
        if self.stepper.ema is not None:
            follow_structure(self.stepper.ema, self.model)
        return True


def build_parts(
    cfg: DictConfig,
    device: torch.device,
    rank: DistInfo,
    clock: StartupClock | None = None,
    split_manifest: dict[str, Any] | None = None,
) -> Parts:
    """Data, model, freezing, optimizer and scheduler, precision and EMA, in that order.

    `split_manifest`: a resumed run's split.json, whose splits the data must be.
    """
    check_cache_features(cfg)
    splits = build_splits(cfg.data, cfg.seed, split_manifest)
    mark(clock, "splits")  # reading the data's index, cutting (or reading) the splits
    task = build_task(cfg, splits.class_names)
    task.attach(splits)
    model, model_info = task.build_model(cfg.model)
    check_freeze(cfg.freeze, model_info.pretrained_loaded)
    if cfg.freeze.policy == "lora":
        add_lora(model, cfg.freeze, model_info)
    mark(clock, "model")
    prep = task.preprocessing(model_info, cfg.data)
    loaders = task.data_loaders(cfg, splits, prep, device, rank)
    model.to(device)
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    freezer = Freezer(model, cfg.freeze, model_info)  # before the optimizer, compile, DDP
    freezer.apply(epoch=1)
    if cfg.freeze.policy == "lora":
        report_share(model)
    trained = model
    if cfg.freeze.cache_features:
        head = model.get_submodule(model_info.head[0])
        loaders = feature_loaders(model, head, loaders, cfg, prep.as_dict(), device)
        trained = head
    mark(clock, "data")
    net = wrap(trained, cfg, device)
    groups = trainable_groups(cfg, freezer, list(model.parameters()))
    optimizer = build_optimizer(cfg.optimizer, groups)
    scheduler = instantiate(cfg.scheduler)(
        optimizer,
        steps_per_epoch=steps_in_epoch(loaders["train"], cfg.trainer),
        epochs=cfg.trainer.epochs,
    )
    dtype = autocast_dtype(cfg.trainer.precision, device)
    ema = build_ema(model, cfg.trainer.ema_decay)
    criterion = task.loss(splits.train).to(device)
    scaler = grad_scaler(device, dtype)
    check_mixing(cfg)
    mixer = batch_mixer(cfg.augment, cfg.data, len(splits.class_names), cfg.seed)
    stepper = Stepper(
        optimizer, scheduler, device, dtype, scaler, ema, model, task, criterion, mixer
    )
    return Parts(
        cfg, device, splits, task, model, model_info, prep, loaders, freezer, trained, net, stepper
    )


def wrap(module: nn.Module, cfg: DictConfig, device: torch.device) -> nn.Module:
    compiled = maybe_compile(module, cfg.trainer.compile, device)
    return wrap_ddp(compiled, device, cfg.trainer.sync_batchnorm)


def trainable_groups(
    cfg: DictConfig, freezer: Freezer, params: list[nn.Parameter]
) -> list[dict[str, Any]]:
    return param_groups(
        params,
        cfg.optimizer.weight_decay,
        cfg.optimizer.lr,
        freezer.backbone_parameters(),
        cfg.freeze.backbone_lr_mult,
    )
