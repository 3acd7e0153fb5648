"""Freezing done right: BatchNorm statistics, model.train(), the optimizer, thawing, the guard."""

from __future__ import annotations

import pytest
import timm
import torch
from omegaconf import OmegaConf
from torchvision.ops.misc import FrozenBatchNorm2d

from finetune.engine.optim import add_param_groups, param_groups
from finetune.engine.schedulers import cosine_with_warmup
from finetune.models import timm as timm_source
from finetune.models.freeze import Freezer, check_freeze, frozen_stage_count
from finetune.models.source import ModelInfo
from finetune.safety.errors import FinetuneError


def freeze_cfg(policy: str, **extra) -> OmegaConf:
    base = {
        "policy": policy,
        "stages": 1,
        "unfreeze_at_epoch": 2,
        "unfreeze_every_n_epochs": None,
        "backbone_lr_mult": 0.1,
        "allow_random_backbone": False,
        "cache_features": False,
    }
    return OmegaConf.create({**base, **extra})


def info_of(model: torch.nn.Module) -> ModelInfo:
    """What the timm source says of `model`: its head and stages."""
    head = timm_source.head_of(model)
    info = ModelInfo("m", 3, "test", True, [], "timm", head)
    info.stages = timm_source.stages_of(model, head)
    return info


def frozen_model(policy: str, name: str = "test_resnet", **extra):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3)
    freezer = Freezer(model, freeze_cfg(policy, **extra), info_of(model))
    freezer.apply(epoch=1)
    return model, freezer


def test_backbone_freezes_weights_and_batchnorm_statistics_through_train():
    model, _ = frozen_model("backbone")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()  # must not undo the freeze
    model(torch.randn(8, 3, 32, 32) * 3 + 1).sum().backward()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    frozen = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    assert all(p.grad is None for p in frozen)  # no backward through the backbone


def test_no_graph_is_built_through_a_frozen_backbone():
    model, _ = frozen_model("backbone")
    features = model.forward_features(torch.randn(2, 3, 32, 32))
    assert features.grad_fn is None


def test_optimizer_receives_only_trainable_parameters_with_their_learning_rates():
    model, freezer = frozen_model("partial", stages=1)
    groups = param_groups(list(model.parameters()), 0.05, 1e-3, freezer.backbone_parameters(), 0.1)
    given = {id(p) for g in groups for p in g["params"]}
    assert given == {id(p) for p in model.parameters() if p.requires_grad}
    head = {id(p) for p in model.fc.parameters()}
    for group in groups:
        is_head = all(id(p) in head for p in group["params"])
        assert group["lr"] == pytest.approx(1e-3 if is_head else 1e-4)
        one_dim = all(p.ndim == 1 for p in group["params"])
        assert group["weight_decay"] == (0.0 if one_dim else 0.05)


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "convnext_atto", "efficientnet_b0"])
def test_partial_freezes_the_stem_and_first_stages_of_any_family(name):
    model, freezer = frozen_model("partial", name=name, stages=1)
    stages = freezer.stages
    assert len(stages) >= 3
    first = dict(model.named_parameters())
    stem_and_first = [n for stage in stages[:2] for n in stage.modules + stage.parameters]
    last = stages[-1].modules + stages[-1].parameters

    def params_of(names):
        return [p for n, p in first.items() if any(n == m or n.startswith(f"{m}.") for m in names)]

    assert params_of(stem_and_first) and not any(p.requires_grad for p in params_of(stem_and_first))
    assert all(p.requires_grad for p in params_of(last))
    assert all(p.requires_grad for p in model.get_classifier().parameters())


def test_gradual_schedule_thaws_from_the_top_stage_by_stage():
    cfg = freeze_cfg("gradual", unfreeze_at_epoch=3, unfreeze_every_n_epochs=2)
    assert [frozen_stage_count(cfg, 5, e) for e in range(1, 9)] == [5, 5, 4, 4, 3, 3, 2, 2]
    all_at_once = freeze_cfg("gradual", unfreeze_at_epoch=2)
    assert [frozen_stage_count(all_at_once, 5, e) for e in (1, 2, 3)] == [5, 0, 0]


def test_thawed_parameters_join_the_optimizer_and_follow_the_schedule():
    model, freezer = frozen_model("gradual", unfreeze_at_epoch=2)

    def groups(params):
        return param_groups(
            params,
            0.0,
            1e-2,
            freezer.backbone_parameters(),
            0.1,
        )

    optimizer = torch.optim.SGD(groups(list(model.parameters())), lr=1e-2)
    scheduler = cosine_with_warmup(
        optimizer, steps_per_epoch=4, epochs=4, warmup_epochs=0, min_lr_ratio=0.0
    )
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    thawed = freezer.apply(epoch=2)
    assert thawed and all(p.requires_grad for p in thawed)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    add_param_groups(optimizer, scheduler, groups(thawed))
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    head_lr, backbone_lr = optimizer.param_groups[0]["lr"], optimizer.param_groups[-1]["lr"]
    assert backbone_lr == pytest.approx(head_lr * 0.1)
    assert head_lr == pytest.approx(1e-2 * factor)
    scheduler.step()
    assert optimizer.param_groups[-1]["lr"] == pytest.approx(
        1e-3 * scheduler.lr_lambdas[0](scheduler.last_epoch)
    )


def test_freezing_a_random_backbone_is_refused_unless_allowed():
    with pytest.raises(FinetuneError, match="allow_random_backbone"):
        check_freeze(freeze_cfg("backbone"), pretrained_loaded=False)
    check_freeze(freeze_cfg("backbone", allow_random_backbone=True), pretrained_loaded=False)
    check_freeze(freeze_cfg("none"), pretrained_loaded=False)
    check_freeze(freeze_cfg("backbone"), pretrained_loaded=True)
