"""Which epochs are best: the top-k by the monitored score, ties, and the files' names.

Apart from the checkpointer (checkpointer.py), which writes the files these choose, so that the
rules read on their own: a NaN is never ranked, a tie goes to the lower loss of the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from finetune.engine.checkpoint import TOP_K_PREFIX


@dataclass
class TopK:
    """The best `k` checkpoints as (score, file name), best first; survives a resume."""

    k: int
    mode: str
    entries: list[tuple[float, str]] = field(default_factory=list)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def admits(self, score: float) -> bool:
        if math.isnan(score):  # no rank among numbers: never kept
            return False
        return self.k > 0 and (
            len(self.entries) < self.k or self.better(score, self.entries[-1][0])
        )

    def add(self, score: float, name: str) -> list[str]:
        """Insert an entry; return the names that fell out of the top k."""
        self.entries.append((score, name))
        self.entries.sort(key=lambda entry: entry[0], reverse=self.mode == "max")
        evicted = [n for _, n in self.entries[self.k :]]
        self.entries = self.entries[: self.k]
        return evicted


def tie_breaker(monitor: str) -> str:
    """The loss of the weights `monitor` scores (val/loss for val/acc, val_ema/loss for
    val_ema/acc): it decides between epochs of an equal score. For a loss it is itself."""
    return f"{monitor.split('/', 1)[0]}/loss"


def improves_on(best: dict, score: float, loss: float | None, ranking: TopK) -> bool:
    """Whether `score` (with `loss`, its tie-breaker) is better than the `best` so far.

    A NaN is never best, and never blocks a later number (every comparison with NaN is False,
    so a NaN best, as older checkpoints may hold, would stay best for ever). An equal score is
    better when its loss is lower: accuracy over a few hundred images ties often, and the epoch
    that fits them better is the better model. A best saved without a loss keeps its ties.
    """
    if math.isnan(score):
        return False
    best_score, best_loss = best["score"], best.get("loss")
    if best_score is None or math.isnan(best_score) or ranking.better(score, best_score):
        return True
    return score == best_score and None not in (loss, best_loss) and loss < best_loss


def metric_filename(epoch: int, metrics: dict[str, float], monitor: str) -> str:
    """`epoch=007-val_loss=0.1234-val_acc=0.9876.pt`: what a run's files say at a glance."""
    parts = [f"{TOP_K_PREFIX}{epoch:03d}"]
    for key in dict.fromkeys(["val/loss", monitor]):
        if key in metrics:
            parts.append(f"{key.replace('/', '_')}={metrics[key]:.4f}")
    return "-".join(parts) + ".pt"
