"""The same command on one process or several: torchrun DDP (gloo on CPU), precision, accumulation.

Equivalence runs use test_vit (no BatchNorm, whose statistics depend on the per-process batch)
and no augmentation (whose random draws differ per process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TRAIN_TIMEOUT_S, torchrun, train_env
from resume_checks import RESUME_STATE_KEYS, state_differences

TINY = (
    "model=test_resnet",
    "data.image_size=16",
    "trainer.limit_train_batches=4",
    "trainer.progress_bar=false",
    "logger=csv",
)
# A ViT without BatchNorm, no augmentation, plain SGD: only the batch split can differ.
EQUIVALENT = (
    "model=test_vit",
    "data.image_size=16",
    "data.augment=false",
    "optimizer=sgd",
    "optimizer.lr=0.01",
    "scheduler=none",
    "trainer.epochs=1",
    "trainer.limit_train_batches=6",
    "trainer.progress_bar=false",
    "logger=csv",
)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["model_state_dict"]


def assert_close_weights(a: Path, b: Path, tolerance: float = 1e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < tolerance, f"largest weight difference {worst}"


@pytest.mark.slow
def test_two_processes_write_one_run_directory_with_reduced_metrics(tmp_path):
    result = torchrun(tmp_path, *TINY, "trainer.epochs=2", f"paths.log_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run_dirs = [p for p in (tmp_path / "out").glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints.count("last.pt") == 1 and "best.pt" in checkpoints
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    hparams = (run_dir / "hparams.yaml").read_text()
    assert "world_size: 2" in hparams
    # The test metrics cover the whole split (both ranks' shards): a single-process evaluation
    # of the same checkpoint gives the same numbers.
    evaluation = subprocess.run(
        [sys.executable, "eval.py", f"ckpt={run_dir}"],
        cwd=REPO_ROOT,
        env=train_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=TRAIN_TIMEOUT_S,
    )
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    single = json.loads((run_dir / "checkpoints/best.eval-test.json").read_text())["metrics"]
    assert single == pytest.approx(summary["test"], abs=1e-5)


@pytest.mark.slow
def test_two_processes_of_batch_b_match_one_process_of_batch_2b(tmp_path, run_train):
    ddp = torchrun(tmp_path, *EQUIVALENT, "data.batch_size=16", f"hydra.run.dir={tmp_path / 'ddp'}")
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-2000:]
    single = run_train(*EQUIVALENT, "data.batch_size=32", run_dir=tmp_path / "single")
    assert single.returncode == 0, single.output[-2000:]
    # 6 steps either way. Both draw one permutation; rank r takes every 2nd index of it, so
    # each global step of 2 x 16 sees the same 32 samples as the single process's step.
    assert_close_weights(tmp_path / "ddp", tmp_path / "single")


def test_gradient_accumulation_matches_the_larger_batch(run_train, tmp_path):
    accumulated = run_train(
        *EQUIVALENT,
        "data.batch_size=16",
        "trainer.accumulate_grad_batches=2",
        run_dir=tmp_path / "acc",
    )
    assert accumulated.returncode == 0, accumulated.output[-2000:]
    large = run_train(
        *EQUIVALENT,
        "data.batch_size=32",
        "trainer.limit_train_batches=3",
        run_dir=tmp_path / "large",
    )
    assert large.returncode == 0, large.output[-2000:]
    assert_close_weights(tmp_path / "acc", tmp_path / "large")


# 32 px, not TINY's 16: there the last stage's stride-2 conv sees 1x1 inputs, and under bf16
# autocast on AVX-512 BF16 processors (torch 2.14.1) its weight gradient is sometimes NaN, a
# different draw in each process (a lone Conv2d(64, 96, 3, stride=2, padding=1) on 1x1 inputs:
# up to 20 of 50 backward passes; on 2x2 inputs none of 300). CI's processor is such a one.
BF16_SAFE = (*TINY, "data.image_size=32")


def test_bf16_autocast_and_fp16_fallback_run_on_cpu(run_train, tmp_path):
    bf16 = run_train(
        *BF16_SAFE,
        "trainer.epochs=1",
        "trainer.precision=bf16",
        "trainer.ema_decay=0.9",
        "trainer.grad_clip=1.0",
        "trainer.channels_last=true",
        run_dir=tmp_path / "bf16",
    )
    assert bf16.returncode == 0, bf16.output[-2000:]
    assert "val_ema/acc" in (tmp_path / "bf16/metrics.csv").read_text()
    state = torch.load(tmp_path / "bf16/checkpoints/last.pt", weights_only=True)
    assert state["ema_state_dict"] is not None
    fp16 = run_train(
        *BF16_SAFE, "trainer.epochs=1", "trainer.precision=16", run_dir=tmp_path / "f16"
    )
    assert fp16.returncode == 0, fp16.output[-2000:]
    assert fp16.output.count("falls back") + fp16.output.count("using bf16") == 1


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_weights(run_train, tmp_path):
    """trainer.compile=true on CPU, where inductor builds C++ kernels: the weights end as
    eager's do, within float tolerance (fused kernels sum in another order), and checkpoints
    hold the model's own names, without torch.compile's `_orig_mod.` prefix."""
    short = (*EQUIVALENT, "data.batch_size=16", "trainer.limit_train_batches=3")
    compiled = run_train(*short, "trainer.compile=true", run_dir=tmp_path / "compiled")
    assert compiled.returncode == 0, compiled.output[-2000:]
    assert "eager mode" not in compiled.output  # it really compiled
    eager = run_train(*short, run_dir=tmp_path / "eager")
    assert eager.returncode == 0, eager.output[-2000:]
    assert not [k for k in weights(tmp_path / "compiled") if "_orig_mod" in k]
    assert_close_weights(tmp_path / "compiled", tmp_path / "eager", tolerance=1e-4)


@pytest.mark.slow
def test_a_ddp_run_resumes_under_torchrun(tmp_path):
    run_dir = tmp_path / "run"
    first = torchrun(tmp_path, *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    resumed = torchrun(tmp_path, f"resume={run_dir}", "trainer.epochs=2")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 2
    assert len((run_dir / "metrics.csv").read_text().strip().splitlines()) == 3


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints/last.pt", weights_only=True)


@pytest.mark.slow
def test_ctrl_c_under_ddp_after_the_thaw_resumes_to_the_straight_runs_end(tmp_path, monkeypatch):
    """freeze=gradual, EMA, a loader worker per rank and augmentation, under DDP, stopped by
    Ctrl-C after the backbone thawed: the resumed run must re-wrap DDP over the thawed backbone
    (or each rank trains its own and they drift apart) and give the EMA the thawed structure;
    it then ends bitwise where the uninterrupted run ends."""
    gradual = (
        *TINY,
        "freeze=gradual",
        "freeze.unfreeze_at_epoch=2",
        "freeze.allow_random_backbone=true",
        "trainer.ema_decay=0.9",
        "data.num_workers=1",
        "trainer.log_every_n_steps=2",  # ranks agree to stop on log steps
        "trainer.epochs=3",
    )
    straight = torchrun(tmp_path, *gradual, f"hydra.run.dir={tmp_path / 's'}")
    assert straight.returncode == 0, straight.stdout[-2000:] + straight.stderr[-2000:]
    run_dir = tmp_path / "run"
    monkeypatch.setenv("FINETUNE_SIGNAL_AT_STEP", "SIGINT:6")  # 4 steps an epoch: in epoch 2
    first = torchrun(tmp_path, *gradual, f"hydra.run.dir={run_dir}")
    assert "interrupted" in (run_dir / "summary.json").read_text(), first.stderr[-2000:]
    assert checkpoint(run_dir)["global_step"] == 6
    monkeypatch.delenv("FINETUNE_SIGNAL_AT_STEP")
    resumed = torchrun(tmp_path, f"resume={run_dir}")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]

    ours, reference = checkpoint(run_dir), checkpoint(tmp_path / "s")
    assert ours["ema_state_dict"].keys() == ours["model_state_dict"].keys()
    found = [
        d for key in RESUME_STATE_KEYS for d in state_differences(ours[key], reference[key], key)
    ]
    assert not found, f"the resumed run differs from the straight one in {found[:8]}"
