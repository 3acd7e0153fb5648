"""LoRA: only adapters and head train, the share is small on a ViT-B, merging changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf

from finetune.models.factory import build_model
from finetune.models.freeze import Freezer
from finetune.models.lora import add_lora, merge_lora
from finetune.models.weights import load_state_dict_file
from finetune.safety.errors import FinetuneError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def lora_cfg(**overrides: object):
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "freeze/lora.yaml"), overrides)


def lora_model(name: str = "test_vit", **overrides: object):
    torch.manual_seed(0)
    cfg = OmegaConf.merge(
        OmegaConf.load(CONF_DIR / "model/test_vit.yaml"),
        {"name": name, "pretrained": False, "kwargs": {"img_size": 32}},
    )
    model, info = build_model(cfg, num_classes=4)
    add_lora(model, lora_cfg(**overrides), info)
    Freezer(model, lora_cfg(**overrides), info).apply(epoch=1)
    return model, info


def test_only_adapters_and_head_train_and_targets_are_attention_and_mlp():
    model, _ = lora_model()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    assert {"head.weight", "head.bias"} <= set(trainable)
    adapted = {n.split(".lora_")[0] for n in trainable if "lora_A" in n}
    assert {
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
    } <= adapted
    assert not any("patch_embed" in n for n in adapted)


def test_trainable_share_of_a_vit_b_is_under_two_percent():
    with torch.device("meta"):
        model, _ = lora_model("vit_base_patch16_224")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable / total < 0.02, trainable / total


def test_merged_model_gives_the_adapted_outputs_with_plain_layers():
    model, _ = lora_model(rank=4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # a trained adapter (B starts at zero)
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        adapted = model(images)
        merged = merge_lora(model)(images)
    assert not torch.allclose(
        adapted, timm.create_model("test_vit", num_classes=4, img_size=32).eval()(images)
    )
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    assert not any("lora_" in n or "base_layer" in n for n in model.state_dict())


def test_no_linear_layer_to_adapt_names_the_key():
    cfg = OmegaConf.merge(
        OmegaConf.load(CONF_DIR / "model/test_resnet.yaml"), {"pretrained": False}
    )
    model, info = build_model(cfg, num_classes=4)
    with pytest.raises(FinetuneError, match="freeze.target_modules"):
        add_lora(model, lora_cfg(), info)


def test_a_lora_runs_checkpoint_loads_as_plain_weights(tmp_path):
    """model.pretrained=<a freeze=lora run>: its adapters are folded into the plain weights."""
    model, _ = lora_model(alpha=32)  # scaling 32 / 8 = 4
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # peft starts B at zero: an untrained adapter changes nothing
    checkpoint = {
        "config": {"freeze": OmegaConf.to_container(lora_cfg(alpha=32))},
        "model_state_dict": model.state_dict(),
    }
    torch.save(checkpoint, tmp_path / "best.pt")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        adapted = model.eval()(images)
    plain = timm.create_model("test_vit", num_classes=4, img_size=32).eval()
    plain.load_state_dict(load_state_dict_file(tmp_path / "best.pt"))  # strict: every key fits
    with torch.no_grad():
        torch.testing.assert_close(plain(images), adapted, atol=1e-5, rtol=1e-5)
