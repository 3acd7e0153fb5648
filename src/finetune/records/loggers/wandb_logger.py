"""Weights & Biases: a run in <run>/wandb/, online with credentials, offline without.

The W&B run mirrors the run directory: config = the resolved Hydra config, name and tags =
the run's overrides, group = the sweep directory for a multirun job (one W&B run per job),
metrics by global step, the labelled image grid and confusion matrix each epoch, best and
test metrics in the summary, the best checkpoint as an artifact on request.

W&B never stops training: no credentials or an unreachable server means offline records
(uploaded later with the `wandb sync` command printed at the end); an init that fails online
is retried offline; any later W&B error is one warning, after which W&B is left out.
"""

from __future__ import annotations

import functools
import logging
import netrc
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import torch
from omegaconf import DictConfig, OmegaConf

from finetune.records.loggers.base import Logger
from finetune.records.predictions import Predictions
from finetune.safety.errors import one_line

log = logging.getLogger(__name__)

Method = TypeVar("Method", bound=Callable[..., None])


def guarded(method: Method) -> Method:
    """Run a W&B call; on error warn once and leave W&B out for the rest of the run."""

    @functools.wraps(method)
    def call(self: WandbLogger, *args: Any, **kwargs: Any) -> None:
        if self.run is None:
            return
        try:
            method(self, *args, **kwargs)
        except Exception as error:
            log.warning(
                "W&B %s failed, W&B records stop here (training and the other records go on): %s",
                method.__name__,
                one_line(error),
            )
            self.abandon()

    return call  # type: ignore[return-value]


class WandbLogger(Logger):
    def __init__(self, run_dir: Path, cfg: DictConfig, run_id: str | None) -> None:
        settings = cfg.logger.wandb
        self.images = settings.images
        self.confusion_matrix = settings.confusion_matrix
        self.upload_checkpoint = settings.log_checkpoint
        self.wants_predictions = bool(self.images or self.confusion_matrix)
        self.mode = settings.mode
        self.run = self.start(run_dir, cfg, run_id)
        self.run_id: str | None = self.run.id if self.run is not None else None

    def start(self, run_dir: Path, cfg: DictConfig, run_id: str | None) -> Any:
        """wandb.init in the chosen mode, then offline, then not at all: never an exception."""
        settings = cfg.logger.wandb
        if self.mode == "disabled":
            return None
        if self.mode == "online" and (reason := why_offline(settings.timeout)):
            log.warning("W&B: %s; logging offline instead", reason)
            self.mode = "offline"
        try:
            import wandb

            if wandb.run is not None:  # a previous job in this process that did not finish
                wandb.run.finish(exit_code=1)
            overrides, group = hydra_job(cfg)
            arguments = dict(
                dir=str(run_dir),
                project=settings.project,
                entity=settings.entity,
                config=OmegaConf.to_container(cfg, resolve=True),
                name=",".join(overrides)[:128] or None,
                tags=[tag[:64] for tag in [*settings.tags, *overrides]],
                group=group,
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(init_timeout=settings.timeout, console="off", quiet=True),
            )
        except Exception as error:
            log.warning("W&B left out of this run: %s", one_line(error))
            return None
        modes = [self.mode, "offline"] if self.mode == "online" else [self.mode]
        for mode in modes:
            try:
                run = wandb.init(mode=mode, **arguments)
            except Exception as error:  # a bad key, no network, a full disk, ...
                log.warning("W&B init failed (%s): %s", mode, one_line(error))
                continue
            self.mode = mode
            return run
        log.warning("W&B left out of this run; metrics.csv and TensorBoard still record it")
        return None

    @guarded
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    @guarded
    def log_images(self, tag: str, image: torch.Tensor, step: int) -> None:
        import wandb

        pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
        self.run.log({tag: wandb.Image(pixels)}, step=step)

    def log_predictions(self, predictions: Predictions, epoch: int, step: int) -> None:
        if self.run is None:
            return
        for tag, picture in predictions.task_pictures(self.images, epoch).items():
            if tag != "val/confusion_matrix" or self.confusion_matrix:
                self.log_images(tag, picture, step)
        for tag, (columns, rows) in predictions.task_tables(self.images).items():
            self.log_table(tag, columns, rows, step)
        if predictions.preds.ndim == 3 and self.images:  # a mask per image: segmentation
            self.log_masks(predictions, step)

    @guarded
    def log_masks(self, predictions: Predictions, step: int) -> None:
        """W&B's own mask overlay (`val/masks`): each validation image with its true and
        predicted masks as layers that the W&B page toggles, classes named."""
        import wandb

        labels = dict(enumerate(predictions.class_names))
        media = []
        images = predictions.images[: self.images]
        shown = zip(images, predictions.targets, predictions.preds, strict=False)  # first images
        for image, truth, pred in shown:
            pixels = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
            # Truth may hold data.ignore_index (255): a layer value of its own.
            ignored = {int(v): "ignored" for v in truth.unique() if int(v) not in labels}
            masks = {
                "predictions": {"mask_data": pred.numpy(), "class_labels": labels},
                "ground_truth": {"mask_data": truth.numpy(), "class_labels": labels | ignored},
            }
            media.append(wandb.Image(pixels, masks=masks))
        self.run.log({"val/masks": media}, step=step)

    @guarded
    def log_table(self, tag: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        import wandb

        self.run.log({tag: wandb.Table(columns=columns, data=rows)}, step=step)

    @guarded
    def log_hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        """Best, final and test metrics into the summary (the config already holds hparams)."""
        self.run.summary.update(metrics)

    @guarded
    def log_checkpoint(self, path: Path, metadata: dict[str, Any]) -> None:
        """The best checkpoint as a `model` artifact, when `logger.wandb.log_checkpoint`."""
        if not self.upload_checkpoint:
            return
        import wandb

        artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata=metadata)
        # immutable: referenced in place, not copied to W&B's staging area outside the run.
        artifact.add_file(str(path), name=path.name, policy="immutable")
        self.run.log_artifact(artifact, aliases=["best", "latest"])

    def abandon(self) -> None:
        """Close what is left of a failed run quietly: with its service gone (killed, crashed),
        wandb's own exit hook would print a traceback at the end of a good run."""
        run, self.run = self.run, None
        import wandb

        for close in (lambda: run.finish(exit_code=1), wandb.teardown):
            try:
                close()
            except Exception:  # the service is gone: nothing more to close
                continue

    def finish(self, status: str) -> None:
        """Close the run (every run, so a multirun gives one W&B run per job)."""
        run, self.run = self.run, None
        if run is None:
            return
        try:
            import wandb

            run.finish(exit_code=0 if status == "completed" else 1)
            # wandb-core writes the run's log after finish() returns; teardown waits for it, so
            # the records are whole when the job ends (atexit alone misses joblib workers).
            wandb.teardown()
        except Exception as error:
            log.warning("W&B finish failed: %s", one_line(error))
            return
        if self.mode == "offline":
            log.info("W&B run saved offline; upload it with: wandb sync %s", Path(run.dir).parent)


def why_offline(timeout: float) -> str | None:
    """Why an online run cannot work right now (no credentials, no route), or None."""
    if not has_credentials():
        return "no credentials (set WANDB_API_KEY or run `wandb login`)"
    url = urlparse(server_url())
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"{host}:{port} is unreachable ({error})"
    return None


def server_url() -> str:
    import wandb

    return os.environ.get("WANDB_BASE_URL") or str(wandb.Settings().base_url)


def has_credentials() -> bool:
    """An API key in the environment, an identity token file, or a netrc entry for the host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    try:
        entries = netrc.netrc(os.environ.get("NETRC"))
    except (OSError, netrc.NetrcParseError):
        return False
    return entries.authenticators(urlparse(server_url()).hostname or "") is not None


def hydra_job(cfg: DictConfig) -> tuple[list[str], str | None]:
    """The job's command-line overrides, and its sweep directory when it is a multirun job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return list(hydra.overrides.task), None
    sweep = Path(hydra.sweep.dir).resolve()
    root = Path(cfg.paths.log_dir).resolve()
    group = str(sweep.relative_to(root)) if sweep.is_relative_to(root) else str(sweep)
    return list(hydra.overrides.task), group[-128:]
