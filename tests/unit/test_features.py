"""The feature cache gives the head exactly what the frozen model would, and is reused."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from finetune.models import timm as timm_source
from finetune.models.features import check_cache_features, feature_loaders
from finetune.models.freeze import Freezer
from finetune.models.source import ModelInfo
from finetune.safety.errors import FinetuneError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def config(tmp_path, **freeze):
    return OmegaConf.create(
        {
            "seed": 0,
            "model": {"source": "timm", "name": "test_resnet"},
            "data": {
                "name": "digits",
                "batch_size": 4,
                "num_workers": 0,
                "augment": False,
                "sampler": "random",
            },
            "augment": OmegaConf.load(CONF_DIR / "augment" / "light.yaml"),
            "freeze": {
                "policy": "backbone",
                "cache_features": True,
                "feature_cache_dir": str(tmp_path / "features"),
                **freeze,
            },
        }
    )


def info_of(model: torch.nn.Module) -> ModelInfo:
    head = timm_source.head_of(model)
    return ModelInfo("m", 3, "test", True, [], "timm", head, {}, timm_source.stages_of(model, head))


def test_cached_features_through_the_head_equal_the_model(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3)
    Freezer(model, OmegaConf.create({"policy": "backbone"}), info_of(model)).apply(epoch=1)
    images, labels = torch.randn(10, 3, 32, 32), torch.randint(0, 3, (10,))
    loaders = {
        split: DataLoader(TensorDataset(images, labels), batch_size=4)
        for split in ("train", "val", "test")
    }
    cfg = config(tmp_path)
    cached = feature_loaders(
        model, model.get_classifier(), loaders, cfg, {"image_size": 32}, torch.device("cpu")
    )
    features, cached_labels = next(iter(cached["val"]))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model.get_classifier()(features), model(images[:4]), atol=1e-5)
    assert torch.equal(cached_labels, labels[:4])
    files = list((tmp_path / "features").glob("*.pt"))
    assert len(files) == 1
    # Reused: a second call reads the file instead of running the backbone.
    mtime = files[0].stat().st_mtime_ns
    feature_loaders(
        model, model.get_classifier(), loaders, cfg, {"image_size": 32}, torch.device("cpu")
    )
    assert files[0].stat().st_mtime_ns == mtime


def test_cache_needs_a_frozen_backbone_and_no_augmentation(tmp_path):
    with pytest.raises(FinetuneError, match="freeze=backbone"):
        check_cache_features(config(tmp_path, policy="partial"))
    cfg = config(tmp_path)
    cfg.data.augment = True
    with pytest.raises(FinetuneError, match="data.augment=false"):
        check_cache_features(cfg)


def test_the_cache_key_follows_the_content_of_the_files(tmp_path):
    from conftest import write_image_tree
    from PIL import Image

    from finetune.data.folders import ImageFiles
    from finetune.models.features import cache_key

    root = write_image_tree(tmp_path / "images", {"": 2}, ("a", "b"))
    files = sorted(str(p) for p in root.rglob("*.png"))
    dataset = ImageFiles([(path, i % 2) for i, path in enumerate(files)], "error", "white", root)
    model = timm.create_model("test_resnet", num_classes=2)
    cfg, prep = config(tmp_path), {"image_size": 16}

    def key() -> str:
        return cache_key(model, cfg, prep, [dataset, dataset, dataset])

    before = key()
    assert key() == before  # the same files: the same entry
    Image.new("RGB", (16, 16), "white").save(files[0])  # same name, new content
    changed = key()
    assert changed != before
    in_memory = TensorDataset(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))
    edited = TensorDataset(torch.ones(2, 3, 4, 4), torch.tensor([0, 1]))
    assert cache_key(model, cfg, prep, [in_memory] * 3) != cache_key(model, cfg, prep, [edited] * 3)
