"""Model sources (timm, torchvision, hf): head, stages, preprocessing, offline failures.

Every test builds what it loads: a torchvision state dict saved to a file, a tiny random
transformers ViT saved with save_pretrained. Nothing touches the network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.ops.misc import FrozenBatchNorm2d

from finetune.models import torchvision as tv_source
from finetune.models.factory import build_model
from finetune.models.freeze import Freezer
from finetune.models.native import save_native
from finetune.safety.errors import FinetuneError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def model_cfg(option: str, **overrides: object) -> DictConfig:
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "model" / f"{option}.yaml"), overrides)


def freeze_cfg(policy: str) -> DictConfig:
    cfg = OmegaConf.load(CONF_DIR / "freeze" / f"{policy}.yaml")
    cfg.backbone_lr_mult = 0.1
    return cfg


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No hub and empty caches, whatever this machine has downloaded before; a connection
    attempt fails the test (failing fast means never waiting on, or retrying, the network)."""
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_home"))
    monkeypatch.setattr(tv_source, "hub_unreachable_reason", lambda host: f"{host}: offline")


@pytest.fixture(scope="module")
def mobilenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's mobilenet_v3_small with ImageNet's 1000 classes, saved as a state dict."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tv") / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random transformers ViT (hidden 32, 2 layers, 32 px) and its image processor, saved."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    ViTForImageClassification(config).save_pretrained(folder)
    processor = ViTImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6], resample=3)
    processor.save_pretrained(folder)
    return folder


def test_torchvision_weights_file_head_stages_and_preprocessing(mobilenet_file: Path) -> None:
    cfg = model_cfg("tv_mobilenet_v3_small", pretrained=str(mobilenet_file))
    model, info = build_model(cfg, num_classes=10)
    assert info.source == "torchvision" and info.pretrained_loaded
    assert info.head == ["classifier.3"] and model.classifier[3].out_features == 10
    assert any("classifier.3.weight" in note for note in info.notes)  # replaced, and said so
    saved = torch.load(mobilenet_file, weights_only=True)
    assert torch.equal(model.features[0][0].weight, saved["features.0.0.weight"])
    assert [s.modules for s in info.stages[:2]] == [["features.0"], ["features.1"]]
    assert info.stages[-1].parameters == ["classifier.0.weight", "classifier.0.bias"]
    # The weights' own eval transform: resize 256, crop 224, ImageNet statistics.
    assert info.preprocessing["crop_size"] == 224 and info.preprocessing["resize_size"] == 256
    assert info.preprocessing["mean"] == pytest.approx([0.485, 0.456, 0.406])
    Freezer(model, freeze_cfg("backbone"), info).apply(epoch=1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["classifier.3.weight", "classifier.3.bias"]
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


def test_torchvision_resnet_stages_are_the_stem_then_layer1_to_4() -> None:
    model, info = build_model(
        model_cfg("tv_resnet50", name="resnet18", pretrained=False, weights=None), 4
    )
    assert info.head == ["fc"]
    assert [s.modules for s in info.stages] == [
        ["conv1", "bn1"],
        ["layer1"],
        ["layer2"],
        ["layer3"],
        ["layer4"],
    ]
    freezer = Freezer(model, OmegaConf.merge(freeze_cfg("partial"), {"stages": 1}), info)
    freezer.apply(epoch=1)
    assert (
        not model.layer1[0].conv1.weight.requires_grad
        and model.layer2[0].conv1.weight.requires_grad
    )


def test_torchvision_offline_and_bad_names_fail_fast_with_the_fix() -> None:
    with pytest.raises(FinetuneError, match="torchvision.*model.pretrained=PATH"):
        build_model(model_cfg("tv_mobilenet_v3_small", pretrained=True), 10)
    _, info = build_model(model_cfg("tv_mobilenet_v3_small", pretrained="auto"), 10)
    assert not info.pretrained_loaded and "offline" in info.notes[0]
    with pytest.raises(FinetuneError, match="model.weights=DEFAULT"):
        build_model(model_cfg("tv_mobilenet_v3_small", pretrained=True, weights=None), 10)
    with pytest.raises(FinetuneError, match="close names: mobilenet_v3_small"):
        build_model(model_cfg("tv_mobilenet_v3_small", name="mobilenet_v3_smal"), 10)
    with pytest.raises(FinetuneError, match="IMAGENET1K_V1"):
        build_model(model_cfg("tv_mobilenet_v3_small", weights="IMAGENET9K"), 10)


def test_a_head_that_cannot_be_found_names_the_attribute_to_set() -> None:
    cfg = model_cfg("tv_mobilenet_v3_small", pretrained=False, head="classifier.9")
    with pytest.raises(FinetuneError, match="model.head=classifier.9 is not a module"):
        build_model(cfg, 10)
    from finetune.models.heads import find_head

    with pytest.raises(FinetuneError, match="set model.head"):
        find_head(torch.nn.Conv2d(3, 10, 1), 10, None, "custom")


def test_hf_folder_head_stages_preprocessing(tiny_vit_dir: Path) -> None:
    model, info = build_model(model_cfg("hf_vit", name=str(tiny_vit_dir)), num_classes=5)
    assert info.source == "hf" and info.pretrained_loaded
    assert info.head == ["model.classifier"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)  # logits, not a ModelOutput
    modules = [s.modules for s in info.stages]
    assert modules[0] == ["model.vit.embeddings"] and len(info.stages) == 4
    assert info.stages[-1].parameters == ["model.vit.layernorm.weight", "model.vit.layernorm.bias"]
    assert info.preprocessing["mean"] == pytest.approx([0.1, 0.2, 0.3])
    assert info.preprocessing["interpolation"] == "bicubic"
    Freezer(model, freeze_cfg("backbone"), info).apply(epoch=1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["model.classifier.weight", "model.classifier.bias"]


def test_hf_hub_id_offline_fails_fast_naming_the_fix() -> None:
    with pytest.raises(FinetuneError, match="hf: google/vit-nope.*model.pretrained=PATH"):
        build_model(model_cfg("hf_vit", name="google/vit-nope"), 10)


@pytest.mark.parametrize("pretrained", ["auto", "false"])
def test_timm_hf_hub_name_offline_names_the_registry_architecture(pretrained: str) -> None:
    """Not huggingface_hub's LocalEntryNotFoundError after a warning about random init."""
    name = "hf-hub:timm/test_resnet.r160_in1k"
    with pytest.raises(FinetuneError, match=f"{name}: its config.json .* model.name=test_resnet "):
        build_model(model_cfg("test_resnet", name=name, pretrained=pretrained), 10)


def test_hf_run_saves_pretrained_with_labels(tiny_vit_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageClassification

    model, info = build_model(model_cfg("hf_vit", name=str(tiny_vit_dir)), num_classes=2)
    run_cfg = OmegaConf.create(
        {"freeze": {"policy": "none"}, "checkpoint": {"dirname": "checkpoints"}}
    )
    save_native(model, info, run_cfg, tmp_path, ["cat", "dog"])
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values=images).logits, model.eval()(images))
    assert reloaded.config.id2label == {0: "cat", 1: "dog"}


def test_timm_run_gets_a_config_that_timm_opens(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model, info = build_model(model_cfg("test_resnet", pretrained=False), num_classes=3)
    (tmp_path / "checkpoints").mkdir()
    save_file(model.state_dict(), tmp_path / "checkpoints/model.safetensors")
    run_cfg = OmegaConf.create(
        {"freeze": {"policy": "none"}, "checkpoint": {"dirname": "checkpoints"}}
    )
    save_native(model, info, run_cfg, tmp_path, ["a", "b", "c"])
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'checkpoints'}", pretrained=True)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(images), model.eval()(images))
