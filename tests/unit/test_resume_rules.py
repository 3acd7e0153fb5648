"""What `resume=` accepts and refuses: overrides, where the run lives, the schedule, GPU RNG."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import compose_train
from omegaconf import OmegaConf

from finetune.engine.checkpoint import rng_state, set_rng_state
from finetune.engine.resume import merge_resume_config, run_dir_of, warn_if_schedule_jumps
from finetune.engine.schedulers import constant, cosine_with_warmup
from finetune.safety.errors import FinetuneError

RUN = ("model=test_resnet", "paths.output_dir=/runs/a")


def resume_with(tmp_path: Path, saved_with: tuple[str, ...], *overrides: str):
    """merge_resume_config for a run saved with `saved_with`, resumed with `overrides`."""
    saved = compose_train(tmp_path, *RUN, *saved_with)
    composed = compose_train(tmp_path, *RUN, *overrides, "resume=/runs/a")
    saved_plain = OmegaConf.to_container(saved, resolve=True)
    may_change = list(composed.checkpoint.resume_may_change)
    return merge_resume_config(composed, saved_plain, [*overrides, "resume=/runs/a"], may_change)


@pytest.mark.parametrize(
    ("group", "changed"),
    [("debug=fast", "checkpoint.save_top_k=1"), ("experiment=digits_resnet18", "optimizer.lr")],
)
def test_a_global_group_override_is_compared_key_by_key(tmp_path, group, changed):
    with pytest.raises(FinetuneError, match=f"{group} sets {changed}"):
        resume_with(tmp_path, (), group)


def test_a_global_group_the_run_was_saved_with_is_accepted(tmp_path):
    merged = resume_with(tmp_path, ("debug=fast",), "debug=fast", "trainer.epochs=3")
    assert merged.trainer.epochs == 3
    assert merged.trainer.limit_train_batches == 3  # the saved run's debug=fast


def test_allowed_keys_still_change_and_others_are_refused(tmp_path):
    assert resume_with(tmp_path, (), "trainer.epochs=20").trainer.epochs == 20
    with pytest.raises(FinetuneError, match="data.batch_size"):
        resume_with(tmp_path, (), "data.batch_size=8")


@pytest.mark.parametrize(("saved_data", "filled"), [("digits", True), ("digits_multilabel", False)])
def test_a_key_its_data_option_gained_since_the_run_was_saved_takes_the_default(
    tmp_path, saved_data, filled
):
    """A run of an earlier version lacks keys its option has today; another option's keys
    never mix into a run's group."""
    saved = compose_train(tmp_path, *RUN, f"data={saved_data}")
    saved_plain = OmegaConf.to_container(saved, resolve=True)
    del saved_plain["data"]["upscale_once_mb"]
    saved_plain["data"]["batch_size"] = 8  # a key the run saved keeps its value
    composed = compose_train(tmp_path, *RUN, "resume=/runs/a")  # data=digits
    merged = merge_resume_config(composed, saved_plain, ["resume=/runs/a"], [])
    assert merged.data.name == saved_data and merged.data.batch_size == 8
    assert ("upscale_once_mb" in merged.data) is filled
    if filled:
        assert merged.data.upscale_once_mb == composed.data.upscale_once_mb


def test_a_checkpoint_outside_a_run_directory_is_refused(tmp_path):
    stray = tmp_path / "downloads" / "last.pt"
    stray.parent.mkdir()
    stray.write_bytes(b"")
    with pytest.raises(FinetuneError, match="not in a run directory's checkpoints/ folder"):
        run_dir_of(stray)
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    assert run_dir_of(run / "checkpoints" / "last.pt") == run


def saved_schedule(factory, epochs: int, steps: int) -> dict:
    """The optimizer and config parts of a checkpoint taken after `steps` steps."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = factory(optimizer, 10, epochs)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return {
        "optimizer_state_dict": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "config": {"trainer": {"epochs": epochs}},
    }


def restored_schedule(factory, state: dict, epochs: int):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = factory(optimizer, 10, epochs)
    optimizer.load_state_dict(state["optimizer_state_dict"])
    scheduler.load_state_dict(state["scheduler"])
    return scheduler


def cosine(optimizer, steps_per_epoch, epochs):
    return cosine_with_warmup(optimizer, steps_per_epoch, epochs, 0.5, 0.01)


def test_extending_a_cosine_run_warns_that_the_lr_jumps(caplog):
    state = saved_schedule(cosine, epochs=2, steps=15)
    with caplog.at_level(logging.WARNING):
        assert warn_if_schedule_jumps(restored_schedule(cosine, state, 4), state, 4)
    assert "trainer.epochs=4 (the saved run had 2)" in caplog.text
    assert "the LR jumps from" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the same length, or a length-free schedule: no jump
        assert not warn_if_schedule_jumps(restored_schedule(cosine, state, 2), state, 2)
        flat = saved_schedule(constant, epochs=2, steps=15)
        assert not warn_if_schedule_jumps(restored_schedule(constant, flat, 4), flat, 4)
    assert not caplog.text


def test_cuda_rng_of_more_gpus_than_visible_restores_what_fits(monkeypatch, caplog):
    restored = {}

    def set_one(state: torch.Tensor, device: int = 0) -> None:
        if device >= 1:  # as torch does for a device that is not there
            raise IndexError(f"no CUDA device {device}")
        restored[device] = state

    state = rng_state()  # before the patches: this machine's own, without CUDA states
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in (1, 2)]  # saved on 2 GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_one)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_one)
    with caplog.at_level(logging.WARNING):
        set_rng_state(state)
    assert list(restored) == [0] and torch.equal(restored[0], state["cuda"][0])
    assert "CUDA random state of 2 GPU(s) and this process sees 1" in caplog.text
