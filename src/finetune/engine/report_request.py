"""What every task's report is drawn from: one request, passed from the run or eval.py to the
task's `write_report` and on to the engine module that collects that task's outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from omegaconf import DictConfig
    from torch import nn

    from finetune.data import Preprocessing, Splits


@dataclass(frozen=True)
class ReportRequest:
    """The report of `model` on `split`, written into `report_dir`.

    `cfg` is a run's config: data.batch_size and num_workers load the splits as the run did,
    `report` says how many top losses and calibration bins, `task` holds e.g. the threshold.
    `curves` is the run's curves.png (eval.py has none to show).
    """

    report_dir: Path
    title: str
    model: nn.Module
    splits: Splits
    split: str
    prep: Preprocessing
    cfg: DictConfig
    device: torch.device
    dtype: torch.dtype | None
    curves: Path | None = None

    @property
    def dataset(self) -> Any:
        """The split reported on."""
        return getattr(self.splits, self.split)
