"""check_config: values that would fail later, or run and mean nothing, stop the run at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from finetune.engine.setup import pick_device
from finetune.safety.checks import check_config
from finetune.safety.errors import FinetuneError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def train_cfg(**dotted: object):
    """The trainer/data/task/top-level keys check_config reads, from the YAML defaults."""
    cfg = OmegaConf.create(
        {
            "trainer": OmegaConf.load(CONF_DIR / "trainer" / "default.yaml"),
            "data": OmegaConf.load(CONF_DIR / "data" / "digits.yaml"),
            "task": OmegaConf.load(CONF_DIR / "task" / "classification.yaml"),
            "mode": "max",
        }
    )
    for key, value in dotted.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def test_defaults_pass() -> None:
    check_config(train_cfg())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("trainer.epochs", 0),
        ("trainer.epochs", -2),
        ("trainer.epochs", 1.5),
        ("trainer.epochs", True),
        ("data.batch_size", 0),
        ("data.batch_size", -1),
        ("data.batch_size", "64"),
        ("trainer.log_every_n_steps", 0),
    ],
)
def test_bad_counts_name_the_key_and_value(key: str, value: object) -> None:
    with pytest.raises(FinetuneError, match=f"{key}={value}") as error:
        check_config(train_cfg(**{key.replace(".", "__"): value}))
    assert "positive integer" in str(error.value)


def test_bad_mode_and_workers() -> None:
    with pytest.raises(FinetuneError, match="mode=maximum"):
        check_config(train_cfg(mode="maximum"))
    with pytest.raises(FinetuneError, match="data.num_workers=-1"):
        check_config(train_cfg(data__num_workers=-1))
    with pytest.raises(FinetuneError, match="data.num_workers=many must be auto or an integer"):
        check_config(train_cfg(data__num_workers="many"))
    check_config(train_cfg(data__num_workers="auto"))


def test_auto_workers_follow_the_cores_and_the_data() -> None:
    from finetune.data.loaders import worker_count

    cores = len(os.sched_getaffinity(0))
    assert worker_count("auto", "tensor") == 0  # in memory already: workers only cost
    assert worker_count("auto", "pil") == max(0, min(8, cores - 1))
    assert worker_count(3, "tensor") == 3


def test_cpu_device_and_missing_cuda() -> None:
    import torch

    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(FinetuneError, match="trainer.device=cuda"):
            pick_device("cuda")
