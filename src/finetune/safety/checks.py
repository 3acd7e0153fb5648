"""Checks of the composed config that need no torch: a bad value is refused in a second.

The entrypoint runs them before it imports torch and timm (about 5 s here), so a typo on the
command line costs nothing; the run repeats them, for callers of `finetune.engine.run.run`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from finetune.safety.errors import FinetuneError


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail later, or worse, run and mean nothing."""
    positive = {
        "trainer.epochs": cfg.trainer.epochs,
        "data.batch_size": cfg.data.batch_size,
        "trainer.log_every_n_steps": cfg.trainer.log_every_n_steps,
        "trainer.accumulate_grad_batches": cfg.trainer.accumulate_grad_batches,
    }
    for key, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise FinetuneError(f"{key}={value} must be a positive integer")
    if cfg.mode not in ("min", "max"):
        raise FinetuneError(f"mode={cfg.mode} must be min or max")
    workers = cfg.data.num_workers
    if workers != "auto" and (
        not isinstance(workers, int) or isinstance(workers, bool) or workers < 0
    ):
        raise FinetuneError(f"data.num_workers={workers} must be auto or an integer 0 or more")
    check_data_root(cfg.data)
    check_task_reads_data(cfg)


def check_task_reads_data(cfg: DictConfig) -> None:
    """A text task on images, or an image task on texts, would fail deep in the run.

    Text data sets are the ones that tokenize (`data.max_length`); a task says what it reads in
    `task.inputs`.
    """
    text_data = "max_length" in cfg.data
    if cfg.task.inputs == "text" and not text_data:
        raise FinetuneError(
            f"task=text_classification reads texts but data={cfg.data.name} holds images: use "
            "data=synthetic_reviews, data=text_table data.path=FILE or data=hf_dataset "
            "data.dataset=ID, or drop "
            "task=text_classification"
        )
    if cfg.task.inputs != "text" and text_data:
        raise FinetuneError(
            f"data={cfg.data.name} holds texts but the task reads {cfg.task.inputs}: add "
            f"task=text_classification (python train.py task=text_classification "
            f"data={cfg.data.name})"
        )


def check_data_root(data: DictConfig) -> None:
    """image_folder needs an existing root (the builder checks the layout inside it)."""
    if data.name != "image_folder":
        return
    if not data.root:
        raise FinetuneError(
            "data=image_folder needs data.root=DIR (DIR/train, DIR/val[, DIR/test] with class "
            "sub-folders, or DIR/<class>/ alone)"
        )
    if not Path(data.root).expanduser().is_dir():
        raise FinetuneError(f"data.root={data.root} does not exist or is not a directory")
