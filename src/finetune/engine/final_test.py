"""The test phase of a run: the best checkpoint's weights on the test split, recorded.

Its own file so that run.py reads as the recipe (setup, fit, test) and this as one step of it:
which checkpoint is tested, the native export of its weights, the HParams table, the report.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.engine.checkpointer import Checkpointer
from finetune.engine.distributed import broadcast_from_main, dist_info
from finetune.engine.loop import evaluate
from finetune.engine.records import checkpoint_metadata, faults_so_far
from finetune.engine.report import report_at_end_of_run
from finetune.models.native import save_native
from finetune.models.weights import EMA_PREFIX, load_exact, monitored_weights, safe_torch_load
from finetune.records.loggers import flat_hparams
from finetune.safety.errors import WriteFailed

if TYPE_CHECKING:
    from finetune.engine.run import Run

log = logging.getLogger(__name__)


def test(run: Run) -> float:
    """The best checkpoint's weights on the test split; returns the best monitored value."""
    cfg, parts, loggers = run.cfg, run.parts, run.loggers
    best_path = broadcast_from_main(
        tested_checkpoint(run.checkpointer, cfg.monitor) if run.rank.is_main else None
    )
    if best_path is None:  # every save failed, under checkpoint.on_error=warn
        raise WriteFailed("no checkpoint could be saved in this run; free disk space, run again")
    tested = safe_torch_load(Path(best_path))
    load_exact(parts.model, monitored_weights(tested), best_path)
    if run.rank.is_main:  # timm's config.json, transformers' hf/: the best weights, natively
        save_native(parts.model, parts.model_info, cfg, run.paths.root, parts.task.class_names)
    test_metrics = saved_val_as_test(run, tested.get("metrics") or {})
    if test_metrics is None:
        stepper = parts.stepper
        test_metrics = evaluate(
            run.net,
            parts.loaders["test"],
            parts.task,
            run.metrics,
            stepper.device,
            "test",
            None,
            None,
            stepper.dtype,
        )
    loggers.log_metrics(test_metrics, run.loop.global_step)
    score = run.checkpointer.best["score"]  # None when the monitor was NaN at every epoch
    best_score = float(broadcast_from_main(math.nan if score is None else score))
    # A run killed after its last save, before its summary was written, has no "final" yet.
    final_row = run.summary.get("final", {})
    final = {k: v for k, v in final_row.items() if k.startswith(("train/", "val/"))}
    hparam_metrics = {**final, f"best/{cfg.monitor}": best_score, **test_metrics}
    loggers.log_hparams(flat_hparams(cfg), hparam_metrics)
    loggers.log_checkpoint(Path(best_path), checkpoint_metadata(run))
    loggers.finish("completed")  # curves.png is drawn: the report shows it
    if dist_info().is_main and cfg.report.enabled:
        run.summary["report"] = report_at_end_of_run(run.paths, parts, cfg)
    run.summary.update(
        test=test_metrics,
        test_split=parts.splits.test_source,
        best=run.checkpointer.best,
        best_checkpoint=best_path,
    )
    run.summary.update(faults_so_far(run))
    return best_score


def saved_val_as_test(run: Run, saved: dict[str, float]) -> dict[str, float] | None:
    """test/* without a pass, when the test split is the val samples (a folder without test/):
    the tested checkpoint holds its epoch's val/* figures, which are these same weights on these
    same samples. None when a pass is needed: a real test split, val limited to some batches, or
    a checkpoint saved mid-epoch (no figures)."""
    limited = run.cfg.trainer.limit_val_batches is not None
    prefix = EMA_PREFIX if run.cfg.monitor.startswith(EMA_PREFIX) else "val/"  # the tested weights'
    if not run.parts.splits.test_is_val or limited or f"{prefix}loss" not in saved:
        return None
    log.info(
        "The test split is the val samples (%s): test/* are the tested epoch's %s* figures",
        run.parts.splits.test_source,
        prefix,
    )
    return {f"test/{k[len(prefix) :]}": v for k, v in saved.items() if k.startswith(prefix)}


def tested_checkpoint(checkpointer: Checkpointer, monitor: str) -> str | None:
    """best.pt; last.pt when the monitor was NaN at every epoch (a NaN is never best); None
    when no save succeeded (checkpoint.on_error=warn)."""
    best = checkpointer.best_file()
    if best is not None or checkpointer.failed_saves:
        return None if best is None else str(best)
    last = checkpointer.directory / "last.pt"
    if not last.is_file():
        return None
    log.warning("%s was NaN at every epoch, so no checkpoint is best: testing last.pt", monitor)
    return str(last)
