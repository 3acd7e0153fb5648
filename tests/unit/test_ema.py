"""The EMA: its copy follows the model through a thaw (its tensors pair with the model's by name),
and a run judged by it (monitor=val_ema/...) is tested on its weights."""

from __future__ import annotations

import torch
from conftest import compose_train

from finetune.engine.build import build_parts
from finetune.engine.distributed import DistInfo


def test_a_thaw_gives_the_ema_the_models_structure_and_keeps_its_averages(tmp_path):
    torch.manual_seed(0)  # the weights (so the check) must not depend on the tests run before
    cfg = compose_train(
        tmp_path,
        "model=test_resnet",
        "data.image_size=16",
        "freeze=gradual",
        "freeze.unfreeze_at_epoch=2",
        "freeze.allow_random_backbone=true",
        "trainer.ema_decay=0.5",
    )
    parts = build_parts(cfg, torch.device("cpu"), DistInfo())
    ema, model = parts.stepper.ema, parts.model
    with torch.no_grad():  # averages that differ from the model's weights, to follow them
        for tensor in ema.module.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(1.0)
    averages = {k: v.clone() for k, v in ema.module.state_dict().items()}

    assert parts.thaw(epoch=2)
    assert list(ema.module.state_dict()) == list(model.state_dict())  # BatchNorm is back
    assert all(torch.equal(ema.module.state_dict()[k], v) for k, v in averages.items())

    ema.update(model, step=10)  # timm pairs the two state dicts by position
    weights = model.state_dict()
    for name, average in averages.items():
        if average.is_floating_point():
            expected = 0.5 * average + 0.5 * weights[name]
            # timm lerps (a + 0.5 (w - a)): equal to float32 rounding, absolute near zero
            assert torch.allclose(ema.module.state_dict()[name], expected, atol=1e-6), name


def test_a_test_split_that_is_the_val_samples_takes_the_judged_weights_figures():
    """No test/ folder: test/* are the tested epoch's saved validation figures, of the EMA's
    weights when the run was judged by them (those are the weights it tests)."""
    from types import SimpleNamespace

    from finetune.engine.final_test import saved_val_as_test

    saved = {"val/loss": 0.9, "val/acc": 0.5, "val_ema/loss": 0.4, "val_ema/acc": 0.75}

    def run_judged_by(monitor: str) -> SimpleNamespace:
        cfg = SimpleNamespace(monitor=monitor, trainer=SimpleNamespace(limit_val_batches=None))
        splits = SimpleNamespace(test_is_val=True, test_source="val/")
        return SimpleNamespace(cfg=cfg, parts=SimpleNamespace(splits=splits))

    ema = saved_val_as_test(run_judged_by("val_ema/acc"), saved)
    assert ema == {"test/loss": 0.4, "test/acc": 0.75}
    assert saved_val_as_test(run_judged_by("val/acc"), saved) == {"test/loss": 0.9, "test/acc": 0.5}
