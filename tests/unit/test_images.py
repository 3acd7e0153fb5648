"""Image files as a user sees them: 16-bit, EXIF orientation, transparency, bombs, layouts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from finetune.data import build_splits
from finetune.data.folders import ImageFiles
from finetune.safety.errors import DataFault, FinetuneError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
EXIF_ORIENTATION = 0x0112
ROTATED_90_CLOCKWISE = 6  # "rotate 90 CW to display": how phones save a portrait photo


def folder_cfg(root: Path, **overrides):
    cfg = OmegaConf.load(CONF_DIR / "data" / "image_folder.yaml")
    return OmegaConf.merge(cfg, {"root": str(root), **overrides})


def one_image_dataset(
    tmp_path: Path, image: Image.Image, exif: Image.Exif | None = None, **overrides
) -> ImageFiles:
    """The training split of a folder whose first image is `image` (PNG), decoded as numpy."""
    root = tmp_path / "data"
    for folder in ("train/a", "train/b", "val/a", "val/b"):
        (root / folder).mkdir(parents=True)
        Image.new("RGB", (16, 16), (10, 20, 30)).save(root / folder / "plain.png")
    image.save(root / "train" / "a" / "0.png", **({"exif": exif} if exif else {}))
    splits = build_splits(folder_cfg(root, **overrides), 0)
    splits.train.transform = np.asarray
    return splits.train


def first_image(dataset: ImageFiles) -> np.ndarray:
    index = [Path(path).name for path, _ in dataset.samples].index("0.png")
    return dataset[index][0]


def test_16_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    levels = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    image = Image.fromarray(levels)
    assert image.mode.startswith("I;16")
    pixels = first_image(one_image_dataset(tmp_path, image))
    assert pixels.dtype == np.uint8 and pixels.shape == (4, 4, 3)
    assert pixels[0, :, 0].tolist() == [0, 64, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Wide as stored: red left half, blue right half; upright it is tall, red on top.
    stored = Image.new("RGB", (16, 8), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 8, 8))
    exif = stored.getexif()
    exif[EXIF_ORIENTATION] = ROTATED_90_CLOCKWISE
    pixels = first_image(one_image_dataset(tmp_path, stored, exif))
    assert pixels.shape == (16, 8, 3)
    assert pixels[2, 4].tolist() == [255, 0, 0] and pixels[13, 4].tolist() == [0, 0, 255]


def rgba_with_hidden_green() -> Image.Image:
    """Fully transparent green on the left, opaque black on the right, 50% red in a corner."""
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[:, :4] = (0, 255, 0, 0)
    pixels[:, 4:] = (0, 0, 0, 255)
    pixels[0, 7] = (255, 0, 0, 128)
    return Image.fromarray(pixels)


def test_transparency_is_composited_on_white_by_default(tmp_path: Path) -> None:
    pixels = first_image(one_image_dataset(tmp_path, rgba_with_hidden_green()))
    assert pixels[3, 1].tolist() == [255, 255, 255]  # not the green under the transparency
    assert pixels[3, 6].tolist() == [0, 0, 0]
    assert pixels[0, 7].tolist() == [255, 127, 127]  # half red over white


def test_transparency_on_the_models_mean_or_a_colour(tmp_path: Path) -> None:
    dataset = one_image_dataset(tmp_path / "mean", rgba_with_hidden_green(), background="mean")
    dataset.use_mean((0.5, 0.25, 0.0))
    assert first_image(dataset)[3, 1].tolist() == [128, 64, 0]
    dataset = one_image_dataset(tmp_path / "rgb", rgba_with_hidden_green(), background=[1, 2, 3])
    assert first_image(dataset)[3, 1].tolist() == [1, 2, 3]
    with pytest.raises(FinetuneError, match=r"data.background=pink must be white, black"):
        one_image_dataset(tmp_path / "bad", rgba_with_hidden_green(), background="pink")


def test_palette_transparency_is_composited_too(tmp_path: Path) -> None:
    image = rgba_with_hidden_green().convert("RGB").convert("P")
    image.info["transparency"] = image.getpixel((1, 1))  # the green's palette entry
    pixels = first_image(one_image_dataset(tmp_path, image))
    assert pixels[3, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize("on_bad_image", ["error", "skip"])
def test_a_decompression_bomb_is_skipped_or_named(tmp_path: Path, monkeypatch, on_bad_image):
    dataset = one_image_dataset(
        tmp_path, Image.new("RGB", (64, 64), (1, 2, 3)), on_bad_image=on_bad_image
    )
    # PIL refuses images over twice this many pixels: 64x64 is over, the 16x16 ones are not.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    index = [Path(path).name for path, _ in dataset.samples].index("0.png")
    if on_bad_image == "skip":
        assert dataset[index] is None and dataset.skipped[index]
        assert dataset[1 - index] is not None
        return
    with pytest.raises(DataFault, match=r"a/0.png .*decompression-bomb limit") as error:
        dataset[index]
    assert "\n" not in str(error.value)


def write_tree(root: Path, layout: dict[str, int], classes=("a", "b", "c")) -> Path:
    for split, per_class in layout.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / f"{i}.png")
    return root


def split_of(dataset: ImageFiles, root: Path) -> set[str]:
    return {Path(path).relative_to(root).parts[0] for path, _ in dataset.samples}


def test_train_and_test_without_val_are_splits_not_classes(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "data", {"train": 10, "test": 2})
    splits = build_splits(folder_cfg(root, val_fraction=0.2, test_fraction=0.3), seed=0)
    assert splits.class_names == ["a", "b", "c"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 6)
    assert split_of(splits.train, root) == split_of(splits.val, root) == {"train"}
    assert split_of(splits.test, root) == {"test"} and splits.test_source == "test"
    assert Counter(label for _, label in splits.val.samples) == {0: 2, 1: 2, 2: 2}


@pytest.mark.parametrize("val_name", ["valid", "validation"])
def test_valid_and_validation_folders_are_the_val_split(tmp_path: Path, val_name: str) -> None:
    root = write_tree(tmp_path / "data", {"train": 4, val_name: 2})
    splits = build_splits(folder_cfg(root), seed=0)
    assert splits.class_names == ["a", "b", "c"]
    assert split_of(splits.val, root) == {val_name} and len(splits.val) == 6
    assert val_name in splits.test_source  # no test/: the test metrics are val's, and say so


def test_train_alone_holds_out_val_and_test(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "data", {"train": 10})
    splits = build_splits(folder_cfg(root, val_fraction=0.2, test_fraction=0.2), seed=0)
    assert splits.class_names == ["a", "b", "c"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 6)


def test_two_validation_folders_are_one_clear_error(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "data", {"train": 2, "val": 1, "valid": 1})
    with pytest.raises(FinetuneError, match=r"has val/ and valid/: keep one validation folder"):
        build_splits(folder_cfg(root), seed=0)


@pytest.mark.parametrize("layout", ["", "train"])
def test_hidden_folders_and_files_are_never_classes_or_images(tmp_path: Path, layout) -> None:
    root = tmp_path / "data"
    write_tree(root, {layout: 5} | ({"val": 2} if layout else {}))
    top = root / layout
    for hidden in (".ipynb_checkpoints/a", "__MACOSX/a", ".trash/b", "a/.ipynb_checkpoints"):
        (top / hidden).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(top / hidden / "0-checkpoint.png")
    (top / "b" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    splits = build_splits(folder_cfg(root, val_fraction=0.2, test_fraction=0.2), seed=0)
    assert splits.class_names == ["a", "b", "c"]
    files = [path for d in (splits.train, splits.val, splits.test) for path, _ in d.samples]
    assert not [path for path in files if "checkpoint" in path or "._" in path]


def test_prediction_decodes_an_image_as_training_does(tmp_path: Path) -> None:
    """finetune.load_model's transform: the same pixels as the data set's, from an open file."""
    import torch

    from finetune.data.inputs import predict_transform
    from finetune.data.loaders import Preprocessing

    prep = Preprocessing(8, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")
    dataset = one_image_dataset(tmp_path, rgba_with_hidden_green(), background="black")
    transform = predict_transform(prep, folder_cfg(tmp_path, background="black"))
    dataset.transform = transform.transforms[-1]  # the evaluation transform alone
    path = next(path for path, _ in dataset.samples if path.endswith("0.png"))
    with Image.open(path) as image:
        predicted = transform(image)
    assert torch.equal(predicted, first_image(dataset))
    assert predicted[1, 3, 1] == -1.0  # black under the transparent green, normalised
