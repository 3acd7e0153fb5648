"""A config read back from a checkpoint may not choose code: safety/trust.py's allow-list."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import compose_train
from omegaconf import OmegaConf

from finetune.safety.trust import UntrustedConfig, allowed_targets, package_of, trusted_config

PICKLE_LOAD = {"_target_": "torch.load", "f": "evil.pkl", "weights_only": False}
COPY = {"_target_": "shutil.copy", "src": "/etc/hostname", "dst": "copied"}


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    base = tmp_path_factory.mktemp("trust")
    return compose_train(base, f"paths.output_dir={base}/run")


@pytest.fixture(scope="module")
def saved(composed) -> dict:
    """What a checkpoint of the default run carries: the resolved config."""
    return OmegaConf.to_container(composed, resolve=True)


def test_the_projects_own_saved_config_is_trusted(saved, composed) -> None:
    assert trusted_config(saved, "last.pt", composed).optimizer._target_ == "torch.optim.AdamW"
    assert trusted_config(saved, "last.pt").scheduler._target_.startswith("finetune.engine.")


# Every place a config can carry a `_target_`, including groups no code instantiates today
# (data, loggers) and keys that later issues may add: all are refused unless conf/ offers
# that target at that key.
PLACES = {
    "optimizer": lambda c, p: c["optimizer"].update(p),
    "optimizer_nested": lambda c, p: c["optimizer"].update(betas=p),
    "scheduler": lambda c, p: c["scheduler"].update(p),
    "model_kwargs": lambda c, p: c["model"]["kwargs"].update(act_layer=p),
    "data": lambda c, p: c["data"].update(p),
    "loss": lambda c, p: c["loss"].update(p),
    "task": lambda c, p: c["task"].update(p),
    "logger": lambda c, p: c["logger"].update(extra=p),
    "new_group": lambda c, p: c.update(callbacks={"early_stop": p}),
    "list_item": lambda c, p: c["checkpoint"].update(resume_may_change=[p]),
    "root": lambda c, p: c.update(_target_=p["_target_"]),
}


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("payload", [PICKLE_LOAD, COPY], ids=["torch_load", "shutil_copy"])
def test_a_target_planted_anywhere_is_refused(saved, composed, place, payload) -> None:
    tampered = copy.deepcopy(saved)
    PLACES[place](tampered, dict(payload))
    with pytest.raises(UntrustedConfig, match=f"_target_={payload['_target_']}, which"):
        trusted_config(tampered, "last.pt", composed)


def test_a_target_conf_offers_elsewhere_is_refused_here(saved) -> None:
    tampered = copy.deepcopy(saved)
    tampered["optimizer"]["_target_"] = "finetune.engine.schedulers.constant"  # a scheduler
    with pytest.raises(UntrustedConfig, match="offered: torch.optim.AdamW, torch.optim.SGD"):
        trusted_config(tampered, "last.pt")


def test_a_target_from_this_command_line_is_trusted(tmp_path: Path, saved) -> None:
    composed = compose_train(
        tmp_path, f"paths.output_dir={tmp_path}", "optimizer._target_=torch.optim.RMSprop"
    )
    chosen = copy.deepcopy(saved)
    chosen["optimizer"]["_target_"] = "torch.optim.RMSprop"
    assert trusted_config(chosen, "last.pt", composed).optimizer._target_.endswith("RMSprop")
    with pytest.raises(UntrustedConfig):
        trusted_config(chosen, "last.pt")  # without that command line: refused


def test_an_interpolation_is_refused_and_not_resolved(saved, monkeypatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    tampered = copy.deepcopy(saved)
    tampered["model"]["kwargs"]["name"] = "${oc.env:SECRET_TOKEN}"
    with pytest.raises(UntrustedConfig, match="an interpolation") as raised:
        trusted_config(tampered, "last.pt")
    assert "hunter2" not in str(raised.value)


def test_a_config_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(UntrustedConfig, match="not a mapping"):
        trusted_config(["_target_", "torch.load"], "last.pt")


def test_packages_follow_hydra_headers() -> None:
    assert package_of(Path("optimizer/adamw.yaml"), "# AdamW\n_target_: x") == "optimizer"
    assert package_of(Path("hydra/launcher/slurm.yaml"), "x: 1") == "hydra.launcher"
    assert package_of(Path("experiment/a.yaml"), "# @package _global_\nx: 1") == ""
    assert package_of(Path("train.yaml"), "x: 1") == ""


def test_allowed_targets_come_from_conf(tmp_path: Path) -> None:
    (tmp_path / "optimizer").mkdir()
    (tmp_path / "optimizer/mine.yaml").write_text("_target_: torch.optim.Adagrad\nlr: 0.1\n")
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment/e.yaml").write_text(
        "# @package _global_\nscheduler:\n  _target_: my.sched\n"
    )
    assert allowed_targets(tmp_path, None) == {
        "optimizer": {"torch.optim.Adagrad"},
        "scheduler": {"my.sched"},
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"checkpoint_path": "/elsewhere/evil.pth"},
        {"pretrained_cfg_overlay": {"file": "/elsewhere/evil.pth"}},
        {"pretrained_cfg": {"url": "https://example.com/w.pth"}},
        {"cache_dir": "/elsewhere"},
    ],
)
def test_model_kwargs_never_reach_timms_loading_options(kwargs) -> None:
    from finetune.models import timm as source
    from finetune.models.factory import check_model_kwargs
    from finetune.safety.errors import FinetuneError

    with pytest.raises(FinetuneError, match=f"sets {next(iter(kwargs))}, an option of the timm"):
        check_model_kwargs(kwargs, source, "model.kwargs")
    check_model_kwargs({"drop_rate": 0.1, "global_pool": "avg"}, source, "model.kwargs")


@pytest.mark.parametrize(
    ("source_name", "kwargs"),
    [
        ("hf", {"trust_remote_code": True}),
        ("hf", {"cache_dir": "/elsewhere"}),
        ("hf", {"revision": "main"}),
        ("torchvision", {"weights": "IMAGENET1K_V1"}),
    ],
)
def test_model_kwargs_never_reach_other_loaders_options(source_name, kwargs) -> None:
    """trust_remote_code in a saved config would run a repository's code on eval or resume."""
    from finetune.models.factory import check_model_kwargs, source_of
    from finetune.safety.errors import FinetuneError

    source = source_of(source_name)
    with pytest.raises(FinetuneError, match=f"sets {next(iter(kwargs))}, an option of the"):
        check_model_kwargs(kwargs, source, "model.kwargs")
    check_model_kwargs({"hidden_dropout_prob": 0.1}, source, "model.kwargs")
