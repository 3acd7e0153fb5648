"""Record keepers behind one small interface (base.py): CSV always, TensorBoard, W&B.

`build_loggers` reads the `logger` group (conf/logger/): each backend is imported only when
it is enabled, and only rank 0 writes. A new backend is a file here, a line below and a
conf/logger/NAME.yaml.
"""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from finetune.records.loggers.base import Logger, Loggers
from finetune.records.loggers.csv_logger import CURVES_PNG, METRICS_CSV, CSVLogger
from finetune.safety.errors import FinetuneError

__all__ = ["CURVES_PNG", "METRICS_CSV", "CSVLogger", "Logger", "Loggers", "build_loggers"]

# Settings that count things per epoch or per run: 0 turns the record off.
COUNTS = {
    "tensorboard": ("histogram_every_n_epochs", "images", "pr_curve_classes", "embedding_samples"),
    "wandb": ("images",),
}
WANDB_MODES = ("online", "offline", "disabled")


def build_loggers(
    cfg: DictConfig,
    run_dir: Path,
    is_main: bool,
    wandb_run_id: str | None = None,
    resume_step: int | None = None,
) -> Loggers:
    """The backends named in `cfg.logger`; none on ranks other than 0.

    `cfg` is the whole run config (W&B records it). A resumed run passes its checkpoint's
    `wandb_run_id`, so W&B continues that run, and its `global_step`, so TensorBoard hides
    what a crashed run logged after that step (it is logged again).
    """
    if not is_main:
        return Loggers([])
    check_logger_config(cfg.logger)
    check_writable(run_dir)
    # metrics.csv is part of the run-directory contract, so it is written whatever the choice.
    backends: list[Logger] = [CSVLogger(run_dir / METRICS_CSV, cfg.monitor)]
    if "tensorboard" in cfg.logger:
        from finetune.records.loggers.tensorboard_logger import TensorBoardLogger

        directory = run_dir / cfg.logger.tensorboard.dirname
        backends.append(TensorBoardLogger(directory, cfg.logger.tensorboard, resume_step))
    if "wandb" in cfg.logger:
        from finetune.records.loggers.wandb_logger import WandbLogger

        backends.append(WandbLogger(run_dir, cfg, wandb_run_id))
    loggers = Loggers(backends)
    # A run that dies before its end still closes its records (W&B marks it failed);
    # a run that ends calls finish() itself, which cancels this.
    atexit.register(loggers.finish, "failed")
    return loggers


def check_logger_config(logger: DictConfig) -> None:
    """Reject bad logger settings before anything is trained."""
    for section, keys in COUNTS.items():
        if section not in logger:
            continue
        for key in keys:
            value = logger[section][key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise FinetuneError(
                    f"logger.{section}.{key}={value} must be 0 (off) or a positive integer"
                )
    if "wandb" in logger:
        if logger.wandb.mode not in WANDB_MODES:
            raise FinetuneError(
                f"logger.wandb.mode={logger.wandb.mode} must be one of {', '.join(WANDB_MODES)}"
                " (or set WANDB_MODE)"
            )
        if not logger.wandb.timeout > 0:
            raise FinetuneError(f"logger.wandb.timeout={logger.wandb.timeout} must be > 0 seconds")


def check_writable(run_dir: Path) -> None:
    """The run directory must take files: say which directory, not a traceback mid-run."""
    probe = run_dir / ".write-test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise FinetuneError(
            f"cannot write to the run directory {run_dir} ({error.strerror or error}); "
            "fix its permissions or choose another with hydra.run.dir=DIR"
        ) from None


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The hyper-parameters a sweep compares, flattened for TensorBoard's HParams tab."""
    return {
        "model": cfg.model.name,
        "pretrained": str(cfg.model.pretrained),
        "data": cfg.data.name,
        "batch_size": cfg.data.batch_size,
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1],
        "lr": cfg.optimizer.lr,
        "weight_decay": cfg.optimizer.weight_decay,
        "scheduler": cfg.scheduler._target_.rsplit(".", 1)[-1],
        "epochs": cfg.trainer.epochs,
        "freeze": cfg.freeze.policy,
        "seed": cfg.seed,
    }
