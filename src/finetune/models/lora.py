"""LoRA (`freeze=lora`): low-rank adapters in the backbone's Linear layers, with peft.

The adapters are injected in place (peft's inject_adapter_in_model), so the model keeps its
own class, module names and head: checkpoints hold the base weights plus `lora_A`/`lora_B`, and
resume restores them bitwise. Only the adapters and the head train (the Freezer freezes the
rest). Evaluation and export merge the adapters into the weights (`merge_lora`), which leaves a
plain model of the source's own architecture. A LoRA run's checkpoint given as
`model.pretrained=` is folded the same way from its tensors alone (weights.fold_lora).

Targets: `freeze.target_modules` (module names or suffixes, as peft takes them), or by default
every Linear outside the head: in a ViT (timm, transformers, torchvision) that is the
attention (qkv/query/key/value and its output projection) and the MLP.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf
from torch import nn

from finetune.models.heads import in_head
from finetune.models.source import ModelInfo
from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)


def default_targets(model: nn.Module, head: list[str]) -> list[str]:
    """Every Linear layer outside the head, by full module name."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not in_head(name, head)
    ]


def add_lora(model: nn.Module, cfg: DictConfig, info: ModelInfo) -> None:
    """Inject adapters into `model` in place, as `freeze.rank/alpha/dropout/target_modules` say."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = cfg.target_modules
    targets = (
        default_targets(model, info.head)
        if targets is None
        else OmegaConf.to_container(targets, resolve=True)
    )
    if not targets:
        raise FinetuneError(
            f"freeze=lora found no Linear layer outside the head of {info.name}; set "
            "freeze.target_modules to the names of the layers to adapt"
        )
    config = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets
    )
    # peft marks only the adapters trainable; freezing is the Freezer's job (the head trains).
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    try:
        inject_adapter_in_model(config, model)
    except ValueError as error:  # peft: "Target modules ... not found in the base model"
        raise FinetuneError(
            f"freeze.target_modules={targets}: {str(error).splitlines()[0]}"
        ) from None
    for name, param in model.named_parameters():
        param.requires_grad |= name in trainable


def report_share(model: nn.Module) -> str:
    """'LoRA trains N of M parameters (x%)', counted after freezing."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = f"LoRA trains {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)"
    log.info(line)
    return line


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer's weights and put the plain layer back; in place."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model
