"""Config schema of the Optuna sweeper, registered as hydra/sweeper=optuna (official names)."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESamplerConf:
    """hydra/sweeper/sampler=tpe (the default)."""

    _target_: str = "optuna.samplers.TPESampler"
    seed: int | None = None
    n_startup_trials: int = 10
    multivariate: bool = False
    # Parallel trials (n_jobs > 1, several processes) avoid proposing the same point.
    constant_liar: bool = False


@dataclass
class RandomSamplerConf:
    """hydra/sweeper/sampler=random."""

    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class MedianPrunerConf:
    """hydra/sweeper/pruner=median: stop a trial worse than the median of earlier ones."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class HyperbandPrunerConf:
    """hydra/sweeper/pruner=hyperband."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class OptunaSweeperConf:
    """hydra/sweeper=optuna. `params` maps config keys to interval(a,b), tag(log, interval(a,b)),
    choice(...) or range(...), as in hydra-optuna-sweeper."""

    _target_: str = "hydra_plugins.finetune_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # The sweeper instantiates sampler and pruner itself (a resumed study moves the seed on).
    _recursive_: bool = False
    # _self_ first, so a chosen sampler and pruner land on top of these fields.
    defaults: list[Any] = field(
        default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": None}]
    )
    sampler: Any = MISSING
    # null: no pruning; set, jobs report each epoch's value (sweep/pruning.py).
    pruner: Any = None
    # maximize or minimize (max and min are accepted).
    direction: str = "minimize"
    # A database URL makes the study resumable and shareable; null: a file in the sweep dir.
    storage: str | None = None
    # null: a new generated name (not resumable).
    study_name: str | None = None
    # Trials this command adds to the study.
    n_trials: int = 20
    # Trials handed to the launcher at once (parallel with a parallel launcher).
    n_jobs: int = 2
    params: dict[str, str] | None = None


store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="finetune")
store.store(group="hydra/sweeper/sampler", name="tpe", node=TPESamplerConf, provider="finetune")
store.store(
    group="hydra/sweeper/sampler", name="random", node=RandomSamplerConf, provider="finetune"
)
store.store(group="hydra/sweeper/pruner", name="median", node=MedianPrunerConf, provider="finetune")
store.store(
    group="hydra/sweeper/pruner", name="hyperband", node=HyperbandPrunerConf, provider="finetune"
)
