"""Segmentation data: mask_folder's bad-input errors, joint transforms, the digit canvases;
and the smp source loading a classification run's backbone into its encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from finetune.data.loaders import Preprocessing
from finetune.data.mask_folder import BadMask, mask_folder_splits
from finetune.data.masks import mask_train_transform
from finetune.safety.errors import FinetuneError

CLASSES = ["background", "a", "b"]


def data_cfg(root: Path, **more):
    base = OmegaConf.load(Path(__file__).parents[2] / "conf/data/mask_folder.yaml")
    return OmegaConf.merge(base, {"root": str(root), "class_names": CLASSES, **more})


def write_pair(root: Path, stem: str, mask: np.ndarray, image_size=None) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = image_size or mask.shape[:2]
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "images" / f"{stem}.jpg")
    Image.fromarray(mask).save(root / "masks" / f"{stem}.png")


def good_tree(root: Path, count: int = 10) -> None:
    for i in range(count):
        mask = np.zeros((8, 8), np.uint8)
        mask[:4] = 1 + i % 2
        mask[0, 0] = 255  # ignored pixels are allowed
        write_pair(root, f"s{i}", mask)


def test_a_good_tree_splits_by_fraction_with_presence_labels(tmp_path):
    good_tree(tmp_path)
    splits = mask_folder_splits(data_cfg(tmp_path, val_fraction=0.2, test_fraction=0.2), 0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 2)
    assert splits.kind == "mask" and splits.class_names == CLASSES
    assert splits.train.labels[:, 0].all()  # every mask shows background


def test_a_mask_without_its_image_is_named(tmp_path):
    good_tree(tmp_path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "orphan.png")
    with pytest.raises(BadMask, match=r"orphan\.png: a mask without its image"):
        mask_folder_splits(data_cfg(tmp_path), 0)


def test_an_image_without_its_mask_is_named(tmp_path):
    good_tree(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "lonely.jpg")
    with pytest.raises(BadMask, match=r"lonely\.jpg: a image without its mask"):
        mask_folder_splits(data_cfg(tmp_path), 0)


def test_a_mask_of_another_size_than_its_image_is_named(tmp_path):
    good_tree(tmp_path)
    write_pair(tmp_path, "odd", np.zeros((8, 8), np.uint8), image_size=(8, 9))
    with pytest.raises(BadMask, match=r"odd\.png is 8x8 but its image odd\.jpg is 9x8"):
        mask_folder_splits(data_cfg(tmp_path), 0)


def test_a_mask_value_that_is_no_class_is_named(tmp_path):
    good_tree(tmp_path)
    write_pair(tmp_path, "bad", np.full((8, 8), 7, np.uint8))
    with pytest.raises(BadMask, match=r"bad\.png has value 7, which is no class"):
        mask_folder_splits(data_cfg(tmp_path), 0)


def test_rgb_masks_map_through_the_palette_and_a_missing_colour_is_named(tmp_path):
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    for i in range(6):
        mask = np.zeros((8, 8, 3), np.uint8)
        mask[:4, :, 0] = 255
        write_pair(tmp_path, f"s{i}", mask)
    splits = mask_folder_splits(data_cfg(tmp_path, palette=palette), 0)
    _, mask = splits.train.load(0)
    assert mask[:4].eq(1).all() and mask[4:].eq(0).all()
    stray = np.zeros((8, 8, 3), np.uint8)
    stray[0, 0] = (1, 2, 3)
    write_pair(tmp_path, "stray", stray)
    with pytest.raises(BadMask, match=r"stray\.png has colour \[1, 2, 3\], which data\.palette"):
        mask_folder_splits(data_cfg(tmp_path, palette=palette), 0)


def test_the_joint_transform_moves_image_and_mask_alike_and_keeps_mask_values(tmp_path):
    """A flip and a scale-crop: the mask still marks the image's bright pixels, nearest only."""
    from torchvision import tv_tensors

    cfg = OmegaConf.create({"crop_scale": [0.3, 0.6], "hflip": 1.0})
    prep = Preprocessing(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear")
    image = torch.zeros(3, 32, 32)
    image[:, :, :10] = 1.0  # a bright left band, labelled 2
    mask = torch.zeros(32, 32, dtype=torch.uint8)
    mask[:, :10] = 2
    torch.manual_seed(0)
    for _ in range(5):
        out_image, out_mask = mask_train_transform(cfg, prep)(
            tv_tensors.Image(image), tv_tensors.Mask(mask)
        )
        assert set(out_mask.unique().tolist()) <= {0, 2}  # nearest: no blended labels
        bright = out_image[0] > 0.5
        agree = (bright == (out_mask == 2)).float().mean()
        assert agree > 0.95


def test_digit_canvases_are_a_function_of_the_seed():
    from finetune.data.digit_canvases import digit_canvases_splits

    base = OmegaConf.load(Path(__file__).parents[2] / "conf/data/digit_canvases.yaml")
    cfg = OmegaConf.merge(base, {"image_size": 32, "digit_size": 12, "canvases_per_digit": 0.05})
    a, b, c = (digit_canvases_splits(cfg, seed) for seed in (1, 1, 2))
    assert torch.equal(a.train.load(3)[1], b.train.load(3)[1])
    assert not torch.equal(a.train.load(3)[0], c.train.load(3)[0])
    image, mask = a.train.load(3)
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and int(mask.max()) <= 10


def smp_cfg(pretrained: str):
    return OmegaConf.create(
        {
            "source": "smp",
            "name": "Unet",
            "encoder": "tu-test_resnet",
            "encoder_weights": None,
            "pretrained": pretrained,
            "kwargs": {"decoder_channels": [8, 8, 8, 8, 8]},
        }
    )


def test_a_classifiers_backbone_loads_into_the_encoder(tmp_path):
    import timm
    from safetensors.torch import save_file

    from finetune.models.factory import build_model

    classifier = timm.create_model("test_resnet", num_classes=10)
    save_file(classifier.state_dict(), str(tmp_path / "cls.safetensors"))
    model, info = build_model(smp_cfg(str(tmp_path / "cls.safetensors")), 11)
    assert info.pretrained_loaded and info.head == ["decoder", "segmentation_head"]
    encoder = model.encoder.model.state_dict()
    for key, value in classifier.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(encoder[key], value), key
    assert "encoder loaded from a classifier's backbone" in info.notes[0]
    assert info.stages[0].modules == ["encoder.model.conv1", "encoder.model.bn1"]  # the stem


def test_smp_s_own_encoder_keeps_only_the_stages_its_depth_uses(tmp_path):
    """resnet18 at depth 3 (experiment=segment_digits): smp would keep layer3 and layer4 with no
    gradient, which DDP refuses; a classifier's backbone still loads, those layers left out."""
    import timm
    from safetensors.torch import save_file

    from finetune.models.factory import build_model

    classifier = timm.create_model("resnet18", num_classes=10)
    save_file(classifier.state_dict(), str(tmp_path / "cls.safetensors"))
    cfg = smp_cfg(str(tmp_path / "cls.safetensors"))
    cfg.encoder, cfg.kwargs = "resnet18", {"encoder_depth": 3, "decoder_channels": [8, 8, 8]}
    model, info = build_model(cfg, 11)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert "left out: ['fc', 'layer3', 'layer4']" in info.notes[0]
    assert [s.modules for s in info.stages] == [
        ["encoder.conv1", "encoder.bn1"],
        ["encoder.layer1"],
        ["encoder.layer2"],
    ]


def test_weights_of_another_backbone_are_refused(tmp_path):
    import timm
    from safetensors.torch import save_file

    from finetune.models.factory import build_model

    other = timm.create_model("resnet18", num_classes=10)
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    with pytest.raises(FinetuneError, match="fit neither this segmentation model nor its encoder"):
        build_model(smp_cfg(str(tmp_path / "other.safetensors")), 11)


def test_freeze_backbone_freezes_the_encoder_and_trains_the_decoder(tmp_path):
    from finetune.models.factory import build_model
    from finetune.models.freeze import Freezer

    model, info = build_model(smp_cfg("false"), 11)
    freeze = OmegaConf.create({"policy": "backbone", "allow_random_backbone": True})
    Freezer(model, freeze, info).apply(epoch=1)
    for name, parameter in model.named_parameters():
        assert parameter.requires_grad == (not name.startswith("encoder.")), name
