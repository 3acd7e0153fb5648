"""Every option of every config group composes, and the config commands answer without torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_train
from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
# Groups whose options are `# @package _global_` bundles (DESIGN.md).
GLOBAL_GROUPS = ("experiment", "debug", "hparams_search")
# Optimizer-group keys that train.py reads instead of passing them to the optimizer.
OPTIMIZER_KEYS_FOR_TRAIN = {"backbone_lr_mult"}
# Selected through Hydra's own `hydra` group, checked separately.
SPECIAL_GROUPS = ("hydra",)


def group_options() -> list[tuple[str, str]]:
    """(group, option) for every conf/<group>/<option>.yaml, found on disk so none is missed."""
    return sorted(
        (path.parent.name, path.stem)
        for path in CONF_DIR.glob("*/*.yaml")
        if path.parent.name not in SPECIAL_GROUPS
    )


def resolve_all_but_paths(cfg: DictConfig) -> dict:
    """Resolve every section but `paths` (its output_dir needs a running Hydra job)."""
    return {
        key: OmegaConf.to_container(cfg[key], resolve=True)
        if OmegaConf.is_config(cfg[key])
        else cfg[key]
        for key in cfg
        if key != "paths"
    }


def test_every_group_has_options() -> None:
    groups = {group for group, _ in group_options()}
    assert {"model", "data", "optimizer", "scheduler", "trainer", "logger"} <= groups


@pytest.mark.parametrize(("group", "option"), group_options())
def test_option_composes(tmp_path: Path, group: str, option: str) -> None:
    cfg = compose_train(tmp_path, f"{group}={option}")
    resolved = resolve_all_but_paths(cfg)
    assert resolved["seed"] == 42 and resolved["monitor"] and resolved["mode"] in ("min", "max")
    assert str(tmp_path) in cfg.paths.log_dir
    check_group(cfg, group, option)


def check_group(cfg: DictConfig, group: str, option: str) -> None:
    """Fields each group promises; objects built where they can be without data."""
    import torch
    from hydra.utils import instantiate

    if group == "model":
        import timm
        import torchvision

        assert cfg.model.source in ("timm", "torchvision", "hf", "smp", "hf_text")
        if cfg.model.source == "smp":  # segmentation: an architecture over an encoder
            import segmentation_models_pytorch as smp

            assert cfg.model.name.lower() in smp.MODEL_ARCHITECTURES_MAPPING, cfg.model.name
            assert cfg.model.encoder in smp.encoders.get_encoder_names(), cfg.model.encoder
            assert cfg.model.encoder_weights in (None, "imagenet")
        elif cfg.model.source == "timm":
            assert timm.is_model(cfg.model.name), cfg.model.name
        elif cfg.model.source == "torchvision":
            assert cfg.model.name in torchvision.models.list_models(module=torchvision.models)
        assert str(cfg.model.pretrained).lower() in ("auto", "true", "false")
        assert cfg.model.source == "smp" or cfg.model.drop_path_rate >= 0
        assert isinstance(OmegaConf.to_container(cfg.model.kwargs, resolve=True), dict)
    elif group == "data":
        assert cfg.data.name == option
        size = cfg.data.max_length if "max_length" in cfg.data else cfg.data.image_size  # text
        assert size > 0 and cfg.data.batch_size > 0
        assert cfg.data.num_workers == "auto" or cfg.data.num_workers >= 0
        assert 0 <= cfg.data.val_fraction < 1 and 0 <= cfg.data.test_fraction < 1
        assert "classes" in cfg.data and "augment" in cfg.data
    elif group in ("optimizer", "scheduler"):
        optimizer = build_optimizer(cfg.optimizer)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr)
        scheduler = instantiate(cfg.scheduler)(optimizer, steps_per_epoch=4, epochs=2)
        assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
    elif group == "trainer":
        assert cfg.trainer.epochs > 0 and cfg.trainer.log_every_n_steps > 0
        assert cfg.trainer.device == "auto"
    elif group == "logger":
        assert isinstance(OmegaConf.to_container(cfg.logger), dict)
    elif group == "freeze":
        assert isinstance(cfg.freeze.policy, str)
    elif group == "checkpoint":
        assert cfg.checkpoint.dirname and cfg.checkpoint.save_top_k >= 0
    elif group == "debug":
        assert cfg.trainer.epochs == 1 and cfg.trainer.limit_train_batches
    elif group == "experiment":
        assert cfg.trainer.epochs > 0 and cfg.model.name


def build_optimizer(cfg: DictConfig):
    """The optimizer from its group; keys it does not take must be ones train.py reads itself.

    A misspelt optimizer setting is caught here rather than silently ignored.
    """
    import inspect

    import torch
    from hydra.utils import get_class

    optimizer_class = get_class(cfg._target_)
    assert issubclass(optimizer_class, torch.optim.Optimizer)
    accepted = set(inspect.signature(optimizer_class).parameters)
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k != "_target_"}
    assert {"lr", "weight_decay"} <= set(kwargs)
    assert set(kwargs) - accepted <= OPTIMIZER_KEYS_FOR_TRAIN, set(kwargs) - accepted
    taken = {k: v for k, v in kwargs.items() if k in accepted}
    return optimizer_class([torch.nn.Parameter(torch.zeros(2, 2))], **taken)


def test_logger_list_composes(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, "logger=[csv,tensorboard]")
    assert {"csv", "tensorboard"} <= set(cfg.logger)
    assert "tensorboard" not in compose_train(tmp_path, "logger=csv").logger


def test_default_is_resnet18_on_digits(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path)
    assert (cfg.model.name, cfg.data.name) == ("resnet18", "digits")
    assert cfg.model.pretrained == "auto"


def test_hydra_run_dir_is_timestamped_and_unique(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, hydra_config=True)
    # Raw strings: resolving unique_dir would create the directory.
    run = OmegaConf.to_container(cfg.hydra.run, resolve=False)
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert "unique_dir" in run["dir"] and "%Y-%m-%d" in run["dir"] and "%H-%M-%S" in run["dir"]
    assert "unique_dir" in sweep["dir"] and "multirun" in sweep["dir"]
    assert cfg.hydra.job.chdir is False
    assert not list(tmp_path.iterdir()), "composing must not create run directories"


def test_conf_files_start_with_a_comment() -> None:
    for path in [CONF_DIR / "train.yaml", *CONF_DIR.glob("*/*.yaml")]:
        lines = path.read_text().splitlines()
        assert lines and lines[0].startswith("#"), f"{path} must start with a comment line"
        if path.parent.name in GLOBAL_GROUPS:
            assert lines[0] == "# @package _global_", f"{path} must be a global package"
            assert len(lines) > 1 and lines[1].startswith("# "), f"{path}: say what it is"


def run_python(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cfg_job_prints_config_without_torch(tmp_path: Path) -> None:
    result = run_python("-X", "importtime", "train.py", "--cfg", "job", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "model:" in result.stdout and "name: resnet18" in result.stdout
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line
    }
    assert "hydra" in imported, "importtime output not understood"
    assert not imported & {"torch", "timm", "torchvision"}, "--cfg job imported torch"
    assert not list(tmp_path.iterdir()), "--cfg job must not create a run directory"


def test_help_lists_groups_and_options() -> None:
    result = run_python("train.py", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    for group, option in group_options():
        assert re.search(rf"^{group}: .*\b{option}\b", result.stdout, re.M), (group, option)


def test_package_import_is_cheap() -> None:
    code = (
        "import sys, finetune, finetune.resolvers, finetune.safety.errors; "
        "heavy = {'torch', 'timm', 'torchvision'} & set(sys.modules); "
        "print(sorted(heavy)); sys.exit(1 if heavy else 0)"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, f"importing finetune loaded {result.stdout.strip()}"
