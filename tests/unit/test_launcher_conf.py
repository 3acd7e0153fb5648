"""Sweep configs compose: the SLURM preset on the plugin's schema, the Optuna sweeper's groups."""

from __future__ import annotations

import warnings
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from finetune.resolvers import register_resolvers

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_hydra(tmp_path: Path, *overrides: str) -> DictConfig:
    register_resolvers()
    with (
        warnings.catch_warnings(),
        initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"),
    ):
        # A conf file named like a plugin's config would be merged with it, with a warning.
        warnings.filterwarnings("error", message=".*validated against ConfigStore schema.*")
        cfg = compose("train", [f"paths.log_dir={tmp_path}", *overrides], return_hydra_config=True)
    return cfg.hydra


def test_slurm_preset_sets_cluster_knobs_on_the_plugin_schema(tmp_path: Path) -> None:
    hydra = compose_hydra(tmp_path, "hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    launcher = hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1
    assert launcher.timeout_min > 0 and launcher.max_num_timeout > 0
    assert "qos" in launcher, "the plugin's other options stay available"


def test_optuna_search_uses_the_plugin_with_a_seeded_tpe(tmp_path: Path) -> None:
    hydra = compose_hydra(tmp_path, "hparams_search=optuna", "hydra/sweeper/pruner=median")
    sweeper = hydra.sweeper
    assert sweeper._target_.startswith("hydra_plugins.finetune_optuna_sweeper.")
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == 42
    assert sweeper.direction == "max"  # from `mode`
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    assert {"optimizer.lr", "optimizer.weight_decay", "data.batch_size", "freeze"} <= set(
        sweeper.params
    )
    assert compose_hydra(tmp_path, "hparams_search=optuna").sweeper.pruner is None
