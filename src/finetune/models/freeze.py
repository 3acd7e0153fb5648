"""Freezing policies: which pretrained weights stay fixed, and when they thaw.

  none      train everything
  backbone  everything but the classifier: weights and BatchNorm statistics fixed (BatchNorm
            layers become timm's FrozenBatchNorm2d, so `model.train()` cannot move them); no
            gradient is computed through the backbone, and the optimizer never sees it
  partial   the stem and the first `freeze.stages` stages, any model
  gradual   like backbone, then thawed at `freeze.unfreeze_at_epoch`: all at once, or one stage
            every `freeze.unfreeze_every_n_epochs` epochs from the top down
  lora      like backbone, but low-rank adapters (lora.py) inside the backbone train too

Stages and the head come from the model's source (ModelInfo: timm's coarse group_matcher,
torchvision's layer1..4 / features.N, transformers' embeddings and encoder layers), so one
policy works for every source. Freezing happens before the optimizer, torch.compile and DDP
see the model.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig
from timm.utils.model import freeze as timm_freeze
from timm.utils.model import unfreeze as timm_unfreeze
from torch import nn

from finetune.models.heads import in_head
from finetune.models.source import ModelInfo, Stage
from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)

POLICIES = ("none", "backbone", "partial", "gradual", "lora")


def set_stages(model: nn.Module, stages: list[Stage], frozen: bool) -> None:
    """(Un)freeze weights and BatchNorm statistics of `stages`."""
    names = [n for stage in stages for n in stage.modules]
    direct = {n for stage in stages for n in stage.parameters}
    if names:
        (timm_freeze if frozen else timm_unfreeze)(model, names)
    for name, param in model.named_parameters():
        if name in direct:
            param.requires_grad = not frozen


def frozen_stage_count(cfg: DictConfig, total: int, epoch: int) -> int:
    """How many stages (from the stem up) are frozen during `epoch` (1-based)."""
    if cfg.policy == "none":
        return 0
    if cfg.policy in ("backbone", "lora"):
        return total
    if cfg.policy == "partial":
        return min(total, cfg.stages + 1)  # the stem, then `stages` stages
    if epoch < cfg.unfreeze_at_epoch:
        return total
    if not cfg.unfreeze_every_n_epochs:
        return 0
    thawed = 1 + (epoch - cfg.unfreeze_at_epoch) // cfg.unfreeze_every_n_epochs
    return max(0, total - thawed)


def check_freeze(cfg: DictConfig, pretrained_loaded: bool) -> None:
    """Refuse a frozen random backbone: a head trained on random features is a wasted run."""
    if cfg.policy not in POLICIES:
        raise FinetuneError(f"freeze.policy={cfg.policy} is unknown; use one of {POLICIES}")
    if cfg.policy != "none" and not pretrained_loaded and not cfg.allow_random_backbone:
        raise FinetuneError(
            f"freeze={cfg.policy} but no pretrained weights were loaded (the backbone is random); "
            "set model.pretrained to a weights file or run directory, use freeze=none, or add "
            "freeze.allow_random_backbone=true"
        )
    if cfg.policy == "partial" and cfg.stages < 0:
        raise FinetuneError(f"freeze.stages={cfg.stages} must be 0 or more")
    if cfg.policy == "gradual" and cfg.unfreeze_at_epoch < 1:
        raise FinetuneError(f"freeze.unfreeze_at_epoch={cfg.unfreeze_at_epoch} must be 1 or more")


class Freezer:
    """Applies a policy and moves it along epoch by epoch (gradual thawing)."""

    def __init__(self, model: nn.Module, cfg: DictConfig, info: ModelInfo) -> None:
        self.model, self.cfg, self.head = model, cfg, info.head
        self.stages = info.stages
        self.frozen = 0  # stages frozen now, counted from the stem

    def apply(self, epoch: int) -> list[nn.Parameter]:
        """Set the state for `epoch`; return the parameters it thawed (new to the optimizer)."""
        target = frozen_stage_count(self.cfg, len(self.stages), epoch)
        thawed: list[nn.Parameter] = []
        if target > self.frozen:
            set_stages(self.model, self.stages[self.frozen : target], frozen=True)
            if self.cfg.policy == "lora":  # the adapters inside the frozen stages train
                for name, param in self.model.named_parameters():
                    param.requires_grad |= "lora_" in name
        elif target < self.frozen:
            before = {id(p) for p in self.model.parameters() if p.requires_grad}
            set_stages(self.model, self.stages[target : self.frozen], frozen=False)
            thawed = [p for p in self.model.parameters() if p.requires_grad and id(p) not in before]
            log.info(
                "freeze=%s: epoch %d thaws stages %d-%d (%s parameters)",
                self.cfg.policy,
                epoch,
                target,
                self.frozen - 1,
                f"{sum(p.numel() for p in thawed):,}",
            )
        self.frozen = target
        return thawed

    def backbone_parameters(self) -> set[int]:
        """ids of every parameter outside the classifier (for the backbone learning rate)."""
        return {id(p) for name, p in self.model.named_parameters() if not in_head(name, self.head)}
