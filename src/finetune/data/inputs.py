"""What predict.py runs on: an image, a folder, a glob or a table of files, in a fixed order.

The order is sorted by name, so the same input gives the same predictions.csv byte for byte.
When every file sits in a folder named after one of the model's classes (DIR/<class>/x.png,
an ImageFolder tree), that name is the file's true label, and predict says which were right.
"""

from __future__ import annotations

import csv
import glob
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from finetune.safety.errors import FinetuneError

if TYPE_CHECKING:
    from finetune.data.loaders import Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TABLE_SUFFIXES = (".csv",)


@dataclass
class InputFiles:
    files: list[Path]
    names: list[str]  # as predictions.csv shows them: relative to the folder or table given
    truths: list[str | None]  # the true class of each file, where known

    @property
    def labelled(self) -> bool:
        return bool(self.truths) and all(truth is not None for truth in self.truths)


def gather_inputs(spec: str, class_names: list[str]) -> InputFiles:
    """input=IMAGE|FOLDER|GLOB|TABLE -> the files, their names and (where known) their labels."""
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        return read_table(path, class_names)
    if path.is_file():
        return InputFiles([path], [path.name], [None])
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        names = [p.relative_to(path).as_posix() for p in files]
        return labelled_by_folder(files, names, class_names, root=path, spec=spec)
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        return labelled_by_folder(files, [p.as_posix() for p in files], class_names, None, spec)
    raise FinetuneError(f"input={spec} is not an image, a folder, a glob or a .csv table")


def labelled_by_folder(
    files: list[Path], names: list[str], class_names: list[str], root: Path | None, spec: str
) -> InputFiles:
    if not files:
        raise FinetuneError(
            f"input={spec} holds no image files ({' '.join(IMAGE_SUFFIXES)}); check the path"
        )
    parents = [p.parent.name for p in files]
    known = all(
        parent in class_names and (root is None or p.parent != root)
        for p, parent in zip(files, parents, strict=True)
    )
    return InputFiles(files, names, parents if known else [None] * len(files))


def read_table(path: Path, class_names: list[str]) -> InputFiles:
    """A CSV with a `file` column (relative to the table's folder) and an optional `label`."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "file" not in rows[0]:
        raise FinetuneError(
            f"input={path} must be a CSV with a 'file' column (and optionally 'label')"
        )
    truths = [row.get("label") or None for row in rows]
    unknown = sorted({t for t in truths if t is not None and t not in class_names})
    if unknown:
        raise FinetuneError(
            f"input={path} has labels {unknown[:5]} that are not the model's classes {class_names}"
        )
    files = [path.parent / row["file"] for row in rows]
    return InputFiles(files, [row["file"] for row in rows], truths)


class PredictImages(Dataset):
    """The input files, transformed; an unreadable one yields its error instead of failing."""

    def __init__(self, files: list[Path], transform: Any) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            with Image.open(self.files[index]) as image:
                image.load()
                return {"index": index, "image": self.transform(image)}
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            return {"index": index, "error": f"{type(error).__name__}: {error}"}


def collate_inputs(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Readable images stacked, with their indices; the others as (index, error)."""
    readable = [sample for sample in batch if "image" in sample]
    return {
        "images": torch.stack([s["image"] for s in readable]) if readable else None,
        "indices": [s["index"] for s in readable],
        "errors": [(s["index"], s["error"]) for s in batch if "error" in s],
    }


INPUT_KINDS = ("tensor", "pil", "mask")


def input_kind(data_cfg: DictConfig) -> str:
    """How the run's data turns an image into a model input: its `data.inputs`.

    A checkpoint written before data configs said so (no `inputs` key) gets the rule it was
    trained under: the embedded digits sets were tensors, everything else PIL images.
    """
    if "inputs" not in data_cfg:
        return "tensor" if str(data_cfg.name).startswith("digits") else "pil"
    if data_cfg.inputs not in INPUT_KINDS:
        raise FinetuneError(
            f"data.inputs={data_cfg.inputs} must be one of {', '.join(INPUT_KINDS)} "
            "(how an image file becomes the model's input)"
        )
    return str(data_cfg.inputs)


def predict_transform(prep: Preprocessing, data_cfg: DictConfig) -> Any:
    """What turns a PIL image into the model's input, as in training's evaluation.

    The image is decoded as in training too (data/images.py): upright by its EXIF orientation,
    16-bit scaled, transparency on the run's data.background. `data.inputs` says which of the
    evaluation transforms applies (data/loaders.py: transforms_for).
    """
    from torchvision.transforms import v2

    from finetune.data.images import background_of, to_rgb
    from finetune.data.loaders import transforms_for
    from finetune.data.masks import image_tensor

    kind = input_kind(data_cfg)
    background = background_of(data_cfg, prep.mean)
    rgb = v2.Lambda(lambda image: to_rgb(image, background))
    eval_tf = transforms_for(kind, prep, augment=False)[1]
    if kind == "pil":
        return v2.Compose([rgb, eval_tf])
    if kind == "mask":  # the image alone through the joint transform, read as mask_folder does
        return v2.Compose([rgb, v2.Lambda(image_tensor), eval_tf])
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    return v2.Compose([rgb, to_tensor, eval_tf])
