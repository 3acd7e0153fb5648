"""Parameter groups: no weight decay on norms and biases, nothing for frozen parameters,
the backbone at its own learning rate."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import compose_train
from omegaconf import OmegaConf
from torch import nn

from finetune.engine.optim import build_optimizer, param_groups


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_decay_only_on_matrices_and_frozen_left_out() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # a frozen conv weight
    groups = param_groups(
        list(model.parameters()), 0.05, 1e-3, backbone_ids=set(), backbone_lr_mult=1.0
    )

    decay = [g for g in groups if g["weight_decay"] == 0.05]
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    assert len(decay) == 1 and len(no_decay) == 1 and len(groups) == 2
    assert ids(decay[0]["params"]) == {id(model[3].weight)}
    assert ids(no_decay[0]["params"]) == ids(
        [model[0].bias, model[1].weight, model[1].bias, model[3].bias]
    )
    held = set().union(*(ids(g["params"]) for g in groups))
    assert id(model[0].weight) not in held
    assert all(g["lr"] == 1e-3 for g in groups)


def test_backbone_learns_at_its_multiple_of_the_head_lr() -> None:
    backbone, head = nn.Linear(3, 3), nn.Linear(3, 2)
    params = [*backbone.parameters(), *head.parameters()]
    groups = param_groups(params, 0.1, 1e-2, ids(backbone.parameters()), backbone_lr_mult=0.1)
    assert len(groups) == 4
    for group in groups:
        in_backbone = ids(group["params"]) <= ids(backbone.parameters())
        assert in_backbone or ids(group["params"]) <= ids(head.parameters())
        assert group["lr"] == (1e-3 if in_backbone else 1e-2)


def test_groups_feed_an_optimizer_that_skips_frozen() -> None:
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    groups = param_groups(list(model.parameters()), 0.1, 1e-3, set(), 1.0)
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(held) == 1 and held[0] is model.weight
    assert optimizer.param_groups[0]["lr"] == 1e-3  # the group's lr wins over the default


@pytest.mark.parametrize("option", ["adamw", "sgd"])
def test_optimizers_run_fused_and_step_as_the_plain_loop(tmp_path: Path, option: str) -> None:
    """The YAML's optimizers use torch's fused update (a loop over tensors is torch's CPU
    default: ~8% of a resnet18 step here), and it moves the weights as that loop does."""
    cfg = compose_train(tmp_path, f"optimizer={option}")
    torch.manual_seed(0)
    fused_model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    plain_model, start = copy.deepcopy(fused_model), copy.deepcopy(fused_model)
    fused = build_optimizer(
        cfg.optimizer, param_groups(list(fused_model.parameters()), 0.05, 0.1, set(), 1.0)
    )
    plain_cfg = OmegaConf.merge(cfg.optimizer, {"fused": None})
    plain = build_optimizer(
        plain_cfg, param_groups(list(plain_model.parameters()), 0.05, 0.1, set(), 1.0)
    )
    assert fused.defaults["fused"] is True and not plain.defaults["fused"]
    inputs, targets = torch.randn(8, 6), torch.randint(0, 3, (8,))
    for model, optimizer in ((fused_model, fused), (plain_model, plain)):
        for _ in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
    moved = zip(fused_model.parameters(), plain_model.parameters(), start.parameters(), strict=True)
    for fused_weight, plain_weight, start_weight in moved:
        assert not torch.equal(fused_weight, start_weight)
        torch.testing.assert_close(fused_weight, plain_weight, rtol=1e-5, atol=1e-6)
    # A run saved before the YAML said fused resumes with the update it was saved with, so it
    # ends bitwise where it would have: the loaded groups carry their own `fused`.
    fused.load_state_dict(plain.state_dict())
    assert all(not group["fused"] for group in fused.param_groups)
