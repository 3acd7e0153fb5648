"""How far to trust a model's probabilities: expected calibration error, temperature scaling.

A network trained with cross-entropy is usually over-confident. Temperature scaling (Guo et
al., 2017) divides the logits by one scalar T fitted on the validation split: the predicted
class never changes, only how sure the model says it is. The report saves T in
report/calibration.json and `predict.temperature=auto` applies it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, bins: int) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by their size.

    torchmetrics' multiclass_calibration_error (norm l1), read off the reliability figure's own
    bins: importing torchmetrics for it cost a report 4 s.
    """
    confidence, accuracy, counts = reliability_bins(logits, targets, bins)
    filled = counts > 0
    gaps = counts[filled] * np.abs(accuracy[filled] - confidence[filled])
    return float(gaps.sum() / max(int(counts.sum()), 1))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T > 0 that minimises the cross-entropy of logits / T (L-BFGS on log T, CPU, fp64).

    Deterministic: the same logits give the same T, so predictions made with it reproduce.
    """
    logits, targets = logits.detach().double().cpu(), targets.cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def reliability_bins(
    logits: torch.Tensor, targets: torch.Tensor, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin: mean confidence, accuracy and count (NaN where a bin is empty)."""
    probs = logits.float().softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets).double().numpy()
    confidence = confidence.double().numpy()
    index = np.clip((confidence * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(index, confidence, minlength=bins) / counts
        accuracy = np.bincount(index, correct, minlength=bins) / counts
    return mean_conf, accuracy, counts


def reliability_figure(
    logits: torch.Tensor, targets: torch.Tensor, bins: int, temperature: float, unit: str = "images"
) -> Figure:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.2), dpi=90)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.2)
    edges = np.linspace(0, 1, bins + 1)
    for ax, scaled, title in zip(
        figure.subplots(1, 2),
        (logits, logits / temperature),
        ("as trained", f"temperature {temperature:.3f}"),
        strict=True,
    ):
        _, accuracy, counts = reliability_bins(scaled, targets, bins)
        ece = expected_calibration_error(scaled, targets, bins)
        ax.bar(edges[:-1], np.nan_to_num(accuracy), width=1 / bins, align="edge",
               edgecolor="black", color="C0", label="accuracy")  # fmt: skip
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        ax.set_title(f"{title}: ECE {ece:.4f} ({int(counts.sum())} {unit})")
        ax.legend(loc="upper left", fontsize=8)
    return figure
