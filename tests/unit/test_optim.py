"""Parameter groups: no weight decay on norms and biases, nothing for frozen parameters,
the backbone at its own learning rate."""

from __future__ import annotations

import torch
from torch import nn

from finetune.engine.optim import param_groups


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
