"""What a validation pass leaves behind for pictures: predictions, a few images, features.

`evaluate()` calls `update()` once per batch. Everything stays on the device until `close()`,
which moves it to the host in one go after the pass: collecting adds no host sync per batch.
Only what a backend asked for is kept (the fan-out in loggers/base.py sizes it): the first
`images` images (fixed across epochs, so the grid shows the same samples improving), the
class probabilities of the first `pr_curve_classes` classes, and the classifier's input
features of the first `embedding_samples` samples (read by a hook on the classifier).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

# Side of the thumbnails the embedding projector shows for each point.
SPRITE_SIZE = 32


# A table for the loggers: its column names and its rows (TensorBoard text, a W&B table).
Table = tuple[list[str], list[list[Any]]]


class Predictions:
    def __init__(
        self,
        model: nn.Module,
        class_names: list[str],
        label_text: Callable[[torch.Tensor], str],
        draw: Callable[[Predictions, int, int], dict[str, torch.Tensor]],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        images: int,
        pr_curve_classes: int,
        embedding_samples: int,
        tabulate: Callable[[Predictions, int], dict[str, Table]] | None = None,
    ) -> None:
        self.model = model
        self.tabulate = tabulate  # the task's tables of this pass (texts: the misclassified)
        self.class_names = list(class_names)
        self.label_text = label_text  # the task's: a target or a decision in words
        self.draw = draw  # the task's pictures of this pass
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.max_images = images
        self.max_pr_classes = pr_curve_classes
        self.max_features = embedding_samples
        self.parts: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("targets", "preds", "probs", "images", "features", "sprites")
        }
        # Inputs that are no pictures (token ids), every sample's, and each decision's
        # probability: what a table of texts shows. Batches differ in length: kept per batch.
        self.token_batches: list[torch.Tensor] = []
        self.confidence_parts: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []  # one (2, length) tensor per sample, after close()
        self.confidence = torch.empty(0)
        self.kept_images = self.kept_features = 0
        self.batch_features: torch.Tensor | None = None
        self.hook = None
        if embedding_samples:
            head = model.get_classifier() if hasattr(model, "get_classifier") else None
            if isinstance(head, nn.Module):
                self.hook = head.register_forward_pre_hook(self.grab_features)
            else:
                log.warning("embedding skipped: %s has no get_classifier()", type(model).__name__)
        # Filled by close(), on the host.
        self.targets = torch.empty(0, dtype=torch.long)
        self.preds = torch.empty(0, dtype=torch.long)
        self.probs = torch.empty(0, 0)
        self.images = torch.empty(0, 3, 0, 0)  # de-normalised to [0, 1]
        self.features: torch.Tensor | None = None
        self.sprites: torch.Tensor | None = None
        self.example: torch.Tensor | None = None  # one model input, for tracing the graph
        self.closed = False
        self.pictures: dict[Any, Any] = {}

    def grab_features(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self.batch_features = args[0]

    def update(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        probabilities: torch.Tensor,
        decisions: torch.Tensor,
    ) -> None:
        """Keep one batch's outputs (on the device; no host sync)."""
        self.parts["targets"].append(targets.detach())
        self.parts["preds"].append(decisions.detach())
        if self.max_pr_classes:
            self.parts["probs"].append(probabilities.detach()[:, : self.max_pr_classes])
        pixels = images.is_floating_point()  # token ids (texts) are no pictures
        if not pixels and self.tabulate is not None:
            self.token_batches.append(images.detach())
            self.confidence_parts.append(probabilities.detach().max(dim=1).values)
        take = min(self.max_images - self.kept_images, images.shape[0]) if pixels else 0
        if take > 0:
            self.parts["images"].append(images[:take].detach())
            self.kept_images += take
        take = min(self.max_features - self.kept_features, images.shape[0]) if pixels else 0
        if take > 0 and self.batch_features is not None:
            self.parts["features"].append(self.batch_features[:take].detach().flatten(1))
            small = F.interpolate(images[:take].float(), size=(SPRITE_SIZE, SPRITE_SIZE))
            self.parts["sprites"].append(small)
            self.kept_features += take
        self.batch_features = None

    def close(self) -> None:
        """Detach the hook and move everything to the host: one sync after the whole pass."""
        if self.hook is not None:
            self.hook.remove()
            self.hook = None
        if self.closed:
            return
        self.closed = True
        parts = {k: torch.cat(v).cpu() for k, v in self.parts.items() if v}
        self.parts = {}
        if "targets" in parts:
            self.targets, self.preds = parts["targets"].long(), parts["preds"].long()
        if "probs" in parts:
            self.probs = parts["probs"].float()
        if "images" in parts:
            self.example = parts["images"][:1].clone()  # a plain tensor, not an inference one
            self.images = self.denormalise(parts["images"])
        if "features" in parts:
            self.features = parts["features"].float().clone()
            self.sprites = self.denormalise(parts["sprites"])
        if self.token_batches:
            self.tokens = [row for batch in self.token_batches for row in batch.cpu()]
            self.confidence = torch.cat(self.confidence_parts).float().cpu()
            self.token_batches, self.confidence_parts = [], []

    def denormalise(self, images: torch.Tensor) -> torch.Tensor:
        """Back to [0, 1] RGB for display (one-channel images are repeated to three)."""
        images = (images.float() * self.std + self.mean).clamp(0, 1)
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    def task_pictures(self, images: int, epoch: int) -> dict[str, torch.Tensor]:
        """The task's pictures of this pass (drawn once, however many backends show them)."""
        return self.picture(("task", images), lambda: self.draw(self, images, epoch))

    def task_tables(self, rows: int) -> dict[str, Table]:
        """The task's tables of this pass (tag -> columns and rows), drawn once."""
        if self.tabulate is None:
            return {}
        return self.picture(("tables", rows), lambda: self.tabulate(self, rows))

    def is_target(self, index: int) -> torch.Tensor:
        """Whether each sample's truth includes class `index` (one class, or a 0/1 row)."""
        return self.targets[:, index] > 0 if self.targets.ndim == 2 else self.targets == index

    def picture(self, key: Any, draw: Callable[[], Any]) -> Any:
        """Draw a picture once per pass, however many backends show it."""
        if key not in self.pictures:
            self.pictures[key] = draw()
        return self.pictures[key]

    def __len__(self) -> int:
        return int(self.targets.numel())
