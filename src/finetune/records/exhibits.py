"""What a report shows of the samples it lists: images, or texts. A task picks one.

The report's numbers (confusion, per class, calibration) are the same for every single-label
task; only the samples differ: an image task batches images and draws its top losses as a
contact sheet, a text task pads token ids and lists the misclassified texts in a table.
`Task.report_exhibits()` returns the task's kind, so the engine never asks which task runs.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from finetune.records.gallery import Tile, draw_sheet

if TYPE_CHECKING:
    from PIL import Image

    from finetune.data import Preprocessing


class ImageExhibits:
    """Images: the top losses, as the model saw them, on a contact sheet (top_losses.png)."""

    noun = "images"
    column = "file"  # the column that names a sample in the tables
    table_file = "top_losses.csv"
    heading = "Top losses: the images the model got most wrong"

    def collate(self, batch: list[Any]) -> Any:
        """Batches of (image, target, index), the unreadable images dropped."""
        from finetune.data.folders import collate_readable

        return collate_readable(batch)

    def names(self, dataset: Dataset, split: str, indices: torch.Tensor) -> list[str]:
        return sample_names(dataset, split, indices)

    def exhibit(self, dataset: Dataset, index: int, prep: Preprocessing) -> Image.Image:
        return display_image(dataset, index, prep)

    def listed(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows the table shows: every top loss (right ones too, at low confidence)."""
        return rows

    def sheet(self, rows: list[dict[str, Any]], exhibits: dict[int, Any]) -> bytes | None:
        """The top losses' contact sheet as PNG bytes (None when there are none)."""
        if not rows:
            return None
        buffer = io.BytesIO()
        top_loss_sheet(rows, exhibits).save(buffer, format="PNG")
        return buffer.getvalue()


def sample_names(dataset: Dataset, split: str, indices: torch.Tensor) -> list[str]:
    """Each sample's file where the data set has files, else split[index]."""
    files = getattr(dataset, "samples", None)
    if isinstance(files, list) and files and isinstance(files[0][0], str):
        return [files[i][0] for i in indices.tolist()]
    return [f"{split}[{i}]" for i in indices.tolist()]


def display_image(dataset: Dataset, index: int, prep: Preprocessing) -> Image.Image:
    """The sample as the model saw it (after the eval transform), back in [0, 255] RGB."""
    from PIL import Image

    image = dataset[index][0].float()
    mean = torch.tensor(prep.mean).view(-1, 1, 1)
    std = torch.tensor(prep.std).view(-1, 1, 1)
    pixels = ((image * std + mean).clamp(0, 1) * 255).round().byte()
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def top_loss_sheet(rows: list[dict[str, Any]], images: dict[int, Image.Image]) -> Image.Image:
    tiles = [
        Tile(
            images[row["index"]],
            [
                f"pred {row['predicted']} {row['probability']:.2f}",
                f"true {row['true']}",
                f"loss {row['loss']:.3f}",
            ],
            row["true"] == row["predicted"],
        )
        for row in rows
        if row["index"] in images
    ]
    return draw_sheet(tiles)
