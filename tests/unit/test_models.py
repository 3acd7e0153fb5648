"""build_model: every pretrained source, offline, without waiting on a network."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from finetune.models import timm as timm_source
from finetune.models.factory import build_model, count_parameters
from finetune.safety.errors import FinetuneError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(autouse=True)
def nothing_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline with an empty weights cache, whatever this machine has downloaded before."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(timm_source, "cached_weights_file", lambda name: None)


def model_cfg(pretrained: object, name: str = "test_resnet") -> DictConfig:
    """conf/model/test_resnet.yaml with another name / pretrained source."""
    cfg = OmegaConf.load(CONF_DIR / "model" / "test_resnet.yaml")
    return OmegaConf.merge(cfg, {"name": name, "pretrained": pretrained})


def test_pretrained_false_is_random_init() -> None:
    model, info = build_model(model_cfg(False), num_classes=7)
    assert info.pretrained_source == "random init" and not info.pretrained_loaded
    assert model.num_classes == 7 and info.num_classes == 7
    counts = count_parameters(model)
    assert counts["total"] == counts["trainable"] > 0 and counts["frozen"] == 0


def test_pretrained_auto_offline_goes_on_from_random_with_a_note(caplog) -> None:
    with caplog.at_level("WARNING"):
        model, info = build_model(model_cfg("auto"), num_classes=10)
    assert info.pretrained_source == "random init (auto: weights unavailable)"
    assert not info.pretrained_loaded
    assert info.notes and "HF_HUB_OFFLINE" in info.notes[0]
    assert "random init" in caplog.text
    assert model.num_classes == 10


def test_pretrained_true_offline_names_the_remedy() -> None:
    with pytest.raises(FinetuneError) as error:
        build_model(model_cfg(True), num_classes=10)
    message = str(error.value)
    assert "model.pretrained" in message and "test_resnet" in message and "\n" not in message


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_file_loads_exactly(tmp_path: Path, suffix: str) -> None:
    source = timm.create_model("test_resnet", num_classes=10)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:  # this project's checkpoint layout
        torch.save({"epoch": 1, "model_state_dict": source.state_dict()}, path)
    model, info = build_model(model_cfg(str(path)), num_classes=10)
    assert info.pretrained_loaded and info.pretrained_source == f"file:{path.resolve()}"
    assert info.notes == []
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_weights_file_with_another_head_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "imagenet.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=1000).state_dict(), str(path))
    model, info = build_model(model_cfg(str(path)), num_classes=3)
    assert model.fc.out_features == 3 and info.pretrained_loaded
    assert any("fc.weight" in note for note in info.notes)


def test_missing_path_and_unfinished_run_dir(tmp_path: Path) -> None:
    with pytest.raises(FinetuneError, match="model.pretrained=/no/such/file"):
        build_model(model_cfg("/no/such/file"), num_classes=10)
    with pytest.raises(FinetuneError, match="best.pt"):
        build_model(model_cfg(str(tmp_path)), num_classes=10)


def test_unknown_name_suggests_close_names() -> None:
    with pytest.raises(FinetuneError) as error:
        build_model(model_cfg(False, name="resnet181"), num_classes=10)
    message = str(error.value)
    assert "model.name=resnet181" in message and "resnet18" in message.split("resnet181", 1)[1]


def test_pretrained_auto_with_the_hub_unreachable_does_not_retry(monkeypatch) -> None:
    """The probe path (HF_HUB_OFFLINE unset): a refused connection means random init at once."""
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 443)) == 0:
            pytest.skip("something listens on 127.0.0.1:443")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1")
    _, info = build_model(model_cfg("auto"), num_classes=10)
    assert info.pretrained_source == "random init (auto: weights unavailable)"
    assert "127.0.0.1" in info.notes[0]
    with pytest.raises(FinetuneError, match="model.pretrained=true"):
        build_model(model_cfg("true"), num_classes=10)
