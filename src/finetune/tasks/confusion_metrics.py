"""Epoch metrics of single-label tasks, all read off one confusion matrix.

Accuracy, balanced accuracy, macro F1 (Dice), IoU and top-k accuracy are sums over one n x n
count matrix (and, for top-k, one count). Building them with torchmetrics meant importing it,
and `import torchmetrics` imports scipy.signal, transformers and matplotlib on the way: 4.0 s
of a 28 s image-folder run on this 2-core machine (issue 18), more than the whole validation.
So classification and segmentation count here, in plain torch, and give torchmetrics' figures:
the same averaging rules (a class that is neither true nor predicted is left out of a macro
mean; 0 where a ratio has no denominator), checked against torchmetrics itself in
tests/unit/test_confusion_metrics.py. Multi-label keeps torchmetrics (its mean average precision
needs every score), and a task of one's own may return any object with the same four methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import distributed


@dataclass(frozen=True)
class Counts:
    """What the metrics are computed from: confusion[true, predicted], and top-k hits."""

    confusion: torch.Tensor  # float64, n x n
    top_k_hits: torch.Tensor  # float64 scalar: samples whose class is among the k best
    ignored_class: int | None = None  # an ignore_index that names a class: out of the mean IoU

    @classmethod
    def of(
        cls,
        confusion: torch.Tensor,
        ignore_index: int | None = None,
        top_k_hits: torch.Tensor | None = None,
    ) -> Counts:
        """The counts of a confusion matrix: an ignore_index outside the classes names none."""
        n = confusion.shape[0]
        ignored = ignore_index if ignore_index is not None and 0 <= ignore_index < n else None
        hits = confusion.new_zeros(()) if top_k_hits is None else top_k_hits
        return cls(confusion.double(), hits.double(), ignored)

    @property
    def true_positives(self) -> torch.Tensor:
        return self.confusion.diag()

    @property
    def support(self) -> torch.Tensor:  # true positives + false negatives, per class
        return self.confusion.sum(dim=1)

    @property
    def predicted(self) -> torch.Tensor:  # true positives + false positives, per class
        return self.confusion.sum(dim=0)


Reduction = Callable[[Counts], torch.Tensor]


def safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0 (torchmetrics' zero_division=0)."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-300), 0.0)


def macro_mean(per_class: torch.Tensor, counts: Counts, skip: int | None = None) -> torch.Tensor:
    """The mean over the classes that are true or predicted somewhere (the others are unknown,
    not wrong: a validation split may lack a class), `skip` left out."""
    seen = (counts.support + counts.predicted) > 0
    if skip is not None:
        seen[skip] = False
    return per_class[seen].mean() if seen.any() else per_class.new_zeros(())


def accuracy(counts: Counts) -> torch.Tensor:
    return safe_divide(counts.true_positives.sum(), counts.confusion.sum())


def top_k_accuracy(counts: Counts) -> torch.Tensor:
    return safe_divide(counts.top_k_hits, counts.confusion.sum())


def recall_per_class(counts: Counts) -> torch.Tensor:
    return safe_divide(counts.true_positives, counts.support)


def balanced_accuracy(counts: Counts) -> torch.Tensor:
    """The mean of the per-class recalls: every class weighs the same, whatever its size."""
    return macro_mean(recall_per_class(counts), counts)


def f1_per_class(counts: Counts) -> torch.Tensor:
    tp = counts.true_positives
    return safe_divide(2 * tp, counts.support + counts.predicted)


def f1_macro(counts: Counts) -> torch.Tensor:
    """The mean of the per-class F1 scores (the Dice coefficient, for masks)."""
    return macro_mean(f1_per_class(counts), counts)


def iou_per_class(counts: Counts) -> torch.Tensor:
    tp = counts.true_positives
    return safe_divide(tp, counts.support + counts.predicted - tp)


def mean_iou(counts: Counts) -> torch.Tensor:
    """Over the classes seen, less an ignore_index that names a class (as torchmetrics')."""
    return macro_mean(iou_per_class(counts), counts, skip=counts.ignored_class)


class ConfusionMetrics:
    """torchmetrics' reset/update/compute/to over one confusion matrix, summed across ranks.

    `reductions`: metric name -> function of the counts; `per_class`: name prefix -> per-class
    function, reported as `<prefix><class name>`. `ignore_index`: a target value (a pixel
    nobody labelled) counted nowhere. `top_k`: count the samples whose class is among the k
    most probable (0: not counted).
    """

    def __init__(
        self,
        num_classes: int,
        reductions: dict[str, Reduction],
        per_class: dict[str, tuple[Callable[[Counts], torch.Tensor], list[str]]] | None = None,
        ignore_index: int | None = None,
        top_k: int = 0,
    ) -> None:
        self.num_classes, self.reductions = num_classes, reductions
        self.per_class = per_class or {}
        self.ignore_index, self.top_k = ignore_index, top_k
        self.device = torch.device("cpu")
        self.reset()

    def to(self, device: torch.device | str) -> ConfusionMetrics:
        self.device = torch.device(device)
        self.reset()
        return self

    def reset(self) -> None:
        n = self.num_classes
        # n * n cells, and one more that ignored pixels fall into and nothing reads.
        self.confusion = torch.zeros(n * n + 1, dtype=torch.int64, device=self.device)
        self.top_k_hits = torch.zeros((), dtype=torch.int64, device=self.device)

    def update(self, probabilities: torch.Tensor, targets: torch.Tensor) -> None:
        """probabilities [N, C, ...] and targets [N, ...] of one batch.

        No host sync (no boolean indexing, no bincount, which sizes its output from the data):
        each sample adds one to its cell with scatter_add, deterministic on every device.
        """
        n, targets = self.num_classes, targets.long()
        cells = targets * n + probabilities.argmax(dim=1)
        labelled = None if self.ignore_index is None else targets != self.ignore_index
        if labelled is not None:
            cells = torch.where(labelled, cells, n * n)
        cells = cells.flatten()
        self.confusion.scatter_add_(0, cells, torch.ones_like(cells))
        if self.top_k:
            best = probabilities.topk(self.top_k, dim=1).indices
            hits = (best == targets.unsqueeze(1)).any(dim=1)
            self.top_k_hits += (hits if labelled is None else hits & labelled).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """Every metric, in name order (as torchmetrics' collections list them), over all ranks."""
        summed = torch.cat([self.confusion[: self.num_classes**2], self.top_k_hits.view(1)])
        if distributed.is_available() and distributed.is_initialized():
            distributed.all_reduce(summed)  # every rank's counts (a new tensor: ours stay)
        summed = summed.cpu().double()  # one host sync per split, not per batch
        n = self.num_classes
        counts = Counts.of(summed[: n * n].view(n, n), self.ignore_index, summed[-1])
        results = {name: reduce(counts) for name, reduce in self.reductions.items()}
        for prefix, (per_class, names) in self.per_class.items():
            results.update(zip((prefix + name for name in names), per_class(counts), strict=True))
        return dict(sorted(results.items()))
