"""Loading weights into a model: a head of another size is replaced, anything else is an error."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from finetune.models.weights import load_into, load_state_dict_file, monitored_weights
from finetune.safety.errors import FinetuneError


def tiny(num_classes: int, name: str = "test_resnet") -> torch.nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def test_same_shape_loads_everything() -> None:
    source, target = tiny(10), tiny(10)
    notes = load_into(target, source.state_dict(), source="test", head=["fc"])
    assert notes == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_head_of_another_size_is_replaced_and_reported() -> None:
    torch.manual_seed(0)
    source, target = tiny(1000), tiny(5)
    head_before = target.fc.weight.detach().clone()
    notes = load_into(target, source.state_dict(), source="test", head=["fc"])
    assert len(notes) == 1 and "fc.weight" in notes[0] and "replaced" in notes[0]
    assert target.fc.weight.shape == (5, head_before.shape[1])
    assert torch.equal(target.fc.weight, head_before)
    assert torch.equal(target.conv1[0].weight, source.conv1[0].weight)


def test_wrong_architecture_lists_the_keys() -> None:
    with pytest.raises(FinetuneError) as error:
        load_into(tiny(10), tiny(10, "test_vit").state_dict(), source="vit.pt", head=["fc"])
    message = str(error.value)
    assert "vit.pt" in message and "missing" in message and "unexpected" in message
    assert "conv1.0.weight" in message and "\n" not in message


def test_body_shape_mismatch_is_an_error_not_a_silent_skip() -> None:
    state = tiny(10).state_dict()
    state["conv1.0.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(FinetuneError, match="shape mismatch: conv1.0.weight"):
        load_into(tiny(10), state, source="test", head=["fc"])


def test_files_strip_wrapper_prefixes_and_refuse_pickled_code(tmp_path: Path) -> None:
    state = {"module.fc.weight": torch.ones(2, 2), "_orig_mod.fc.bias": torch.ones(2)}
    torch.save({"model_state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    assert set(load_state_dict_file(tmp_path / "ckpt.pt")) == {"fc.weight", "fc.bias"}

    torch.save({"fc.weight": torch.ones(2), "evil": Path("/")}, tmp_path / "pickled.pt")
    with pytest.raises(FinetuneError, match="pickled.pt"):
        load_state_dict_file(tmp_path / "pickled.pt")

    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FinetuneError, match="broken.safetensors"):
        load_state_dict_file(tmp_path / "broken.safetensors")


def test_weights_of_a_frozen_batchnorm_run_load() -> None:
    """A freeze=backbone run's checkpoint has no num_batches_tracked: model.pretrained=RUN works."""
    from timm.utils.model import freeze

    frozen = tiny(10)
    freeze(frozen, [n for n, _ in frozen.named_children() if n != "fc"])
    state = frozen.state_dict()
    assert not any(k.endswith("num_batches_tracked") for k in state)
    target = tiny(10)
    assert load_into(target, state, source="probe", head=["fc"]) == []
    assert torch.equal(target.conv1[0].weight, frozen.conv1[0].weight)


def test_a_run_judged_by_its_ema_gives_the_ema_weights_to_later_runs(tmp_path: Path) -> None:
    """monitor=val_ema/...: best.pt is best by the EMA's score, so model.pretrained=RUN loads the
    EMA's weights; judged by val/*, the trained ones."""
    trained, averaged = {"fc.weight": torch.ones(2, 2)}, {"fc.weight": torch.zeros(2, 2)}
    for monitor, expected in (("val_ema/acc", averaged), ("val/acc", trained)):
        checkpoint = {
            "model_state_dict": trained,
            "ema_state_dict": averaged,
            "config": {"monitor": monitor},
        }
        assert monitored_weights(checkpoint) is expected
        torch.save(checkpoint, tmp_path / "best.pt")
        assert torch.equal(
            load_state_dict_file(tmp_path / "best.pt")["fc.weight"], expected["fc.weight"]
        )
    # A run without an EMA has only the trained weights, whatever its monitor says.
    assert (
        monitored_weights(
            {
                "model_state_dict": trained,
                "ema_state_dict": None,
                "config": {"monitor": "val_ema/acc"},
            }
        )
        is trained
    )
