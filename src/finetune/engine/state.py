"""What a checkpoint holds, written and read by one symmetric pair: `state_of` and `restore`.

The dict follows the classic PyTorch recipe (`epoch`, `model_state_dict`,
`optimizer_state_dict`, `loss`) and adds what an exact resume needs: scheduler, scaler and EMA
state, the loop's position, every RNG, the freezing state, the resolved config (as data: it is
never used to choose code, see engine/resume.py) and the W&B run id. It opens with
`torch.load(weights_only=True)`. `format_version` says which layout a file has; `check_format`
refuses a layout this code cannot continue, with what to do instead.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from finetune.safety.errors import FinetuneError

if TYPE_CHECKING:
    from finetune.engine.run import Run

# 1: before tasks (no `task` or `loss` in its config). 2: tasks, losses, the task's name.
FORMAT_VERSION = 2


def state_of(run: Run, loss: float, metrics: dict[str, float]) -> dict[str, Any]:
    """The checkpoint dict of `run` now; `metrics` are the epoch's (empty mid-epoch)."""
    from finetune.engine.checkpoint import model_state, rng_state

    stepper = run.parts.stepper
    return {
        "epoch": run.loop.epoch,
        "model_state_dict": model_state(run.parts.model),
        "optimizer_state_dict": stepper.optimizer.state_dict(),
        "loss": loss,
        "scheduler": stepper.scheduler.state_dict(),
        "scaler": stepper.scaler.state_dict() if stepper.scaler else None,
        "ema_state_dict": model_state(stepper.ema.module) if stepper.ema else None,
        "global_step": run.loop.global_step,
        "loop": asdict(run.loop),
        "rng": rng_state(),
        "metrics": metrics,
        "classes": run.parts.task.class_names,
        "split_sha256": run.split_sha256,  # the data behind it: split.json's hash
        "freeze": {"policy": run.cfg.freeze.policy, "frozen_stages": run.parts.freezer.frozen},
        "config": OmegaConf.to_container(run.cfg, resolve=True),
        "wandb_run_id": run.loggers.wandb_run_id,
        "early_stopping": run.stopper.state_dict(),
        "format_version": FORMAT_VERSION,
    }


def restore(state: dict[str, Any], run: Run) -> None:
    """Load what `state_of` wrote: the next step is the one the saved run would have taken."""
    from finetune.engine.checkpoint import set_rng_state
    from finetune.engine.loop import LoopState
    from finetune.models.weights import load_exact

    parts, stepper = run.parts, run.parts.stepper
    run.loop = LoopState(**state["loop"])
    # Thaw as the saved run had by then, so that the optimizer has the same groups, the EMA
    # the same structure, and DDP syncs the thawed backbone (re-wrapped once, at the end).
    epochs = range(2, run.loop.epoch + 1 + (run.loop.step_in_epoch > 0))
    if any([parts.thaw(epoch) for epoch in epochs]):  # a list: every epoch's thaw runs
        run.net = parts.wrap(parts.trained)
    load_exact(parts.model, state["model_state_dict"], "the resumed checkpoint")
    stepper.optimizer.load_state_dict(state["optimizer_state_dict"])
    stepper.scheduler.load_state_dict(state["scheduler"])
    if stepper.scaler is not None and state["scaler"] is not None:
        stepper.scaler.load_state_dict(state["scaler"])
    if stepper.ema is not None and state["ema_state_dict"] is not None:
        load_exact(stepper.ema.module, state["ema_state_dict"], "the resumed EMA weights")
    run.checkpointer.restore(state)
    if "early_stopping" in state:  # written since trainer.patience exists
        run.stopper.load_state_dict(state["early_stopping"])
    set_rng_state(state["rng"])


def check_format(state: dict[str, Any], path: Path | str) -> None:
    """Refuse a checkpoint whose layout this code does not read, saying what to do instead."""
    version = state.get("format_version")
    if version == FORMAT_VERSION:
        return
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FinetuneError(
            f"{path} has checkpoint format {version!r}, newer than this code's "
            f"{FORMAT_VERSION}; update finetune (git pull) to read it"
        )
    raise FinetuneError(
        f"{path} is checkpoint format {version} (written before tasks and losses were "
        f"configurable), this code reads format {FORMAT_VERSION}: continue it with the commit "
        "that wrote it (git_commit in its run's hparams.yaml), or start a new run from its "
        f"weights with model.pretrained={path}"
    )
