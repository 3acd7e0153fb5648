"""Segmentation through the rest of the engine, as classification is tested: DDP, a fault and
its resume, a sweep, bf16 autocast, and freezing the encoder.

They build on the shared tiny run (conftest.py: segmentation_run, 2 epochs of 3 steps). Measured
here under load (2 shared cores): DDP with eval.py 80 s, the interrupted run and its resume
55 s, the sweep of two jobs 45 s; the shared run about 35 s more.
"""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import torch
from conftest import SEGMENTATION, run_script, run_train_in, torchrun
from resume_checks import RESUME_STATE_KEYS, state_differences

# smp's own resnet18 at depth 3, as experiment=segment_digits has it: smp keeps layer3 and layer4
# in the encoder whatever the depth, and DDP waits for their gradients unless they are dropped.
SMP_RESNET = (
    *(o for o in SEGMENTATION if not o.startswith(("model.encoder=", "+model.kwargs"))),
    "model.encoder=resnet18",
    "+model.kwargs.encoder_depth=3",
    "+model.kwargs.decoder_channels=[8,8,8]",
)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load(run_dir / "checkpoints/last.pt")["model_state_dict"]


@pytest.mark.slow
def test_two_processes_write_one_run_whose_metrics_count_every_pixel(tmp_path):
    """Per-class IoU over both ranks' shards is IoU over the whole split's pixels (the
    confusion counts summed, not the ranks' IoUs averaged): eval.py in one process agrees."""
    run_dir = tmp_path / "run"
    result = torchrun(tmp_path, *SMP_RESNET, "trainer.epochs=1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert "world_size: 2" in (run_dir / "hparams.yaml").read_text()
    assert not [k for k in weights(run_dir) if k.startswith(("encoder.layer3", "encoder.layer4"))]
    evaluation = run_script("eval.py", f"ckpt={run_dir}", base=tmp_path)
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    single = json.loads((run_dir / "checkpoints/best.eval-test.json").read_text())["metrics"]
    assert {k for k in single if k.startswith("test/iou_")}, single
    assert single == pytest.approx(summary["test"], abs=1e-5)


INTERRUPT_AT_STEP = 4  # the first step of epoch 2 (3 steps an epoch)


@pytest.mark.slow
def test_ctrl_c_mid_epoch_then_resume_ends_bitwise_as_the_straight_run(
    segmentation_run, tmp_path, monkeypatch
):
    monkeypatch.setenv("FINETUNE_SIGNAL_AT_STEP", f"SIGINT:{INTERRUPT_AT_STEP}")
    interrupted = run_train_in(tmp_path, *SEGMENTATION, "trainer.epochs=2")
    assert interrupted.returncode == 128 + signal.SIGINT, interrupted.output[-3000:]
    assert load(interrupted.run_dir / "checkpoints/last.pt")["global_step"] == INTERRUPT_AT_STEP
    monkeypatch.delenv("FINETUNE_SIGNAL_AT_STEP")
    resumed = run_train_in(tmp_path, f"resume={interrupted.run_dir}", run_dir=interrupted.run_dir)
    assert resumed.returncode == 0, resumed.output[-3000:]
    ours = load(interrupted.run_dir / "checkpoints/last.pt")
    reference = load(segmentation_run / "checkpoints/last.pt")
    found = [
        d for key in RESUME_STATE_KEYS for d in state_differences(ours[key], reference[key], key)
    ]
    assert not found, f"the resumed run differs from the straight one in {found[:8]}"
    trained = json.loads((segmentation_run / "summary.json").read_text())["test"]
    assert json.loads((interrupted.run_dir / "summary.json").read_text())["test"] == trained


@pytest.fixture(scope="module")
def frozen_sweep(segmentation_run, tmp_path_factory) -> dict[str, Path]:
    """One sweep, two jobs under bf16 autocast: freeze=backbone and freeze=partial (the stem,
    layer1 and layer2) over the shared run's weights, at a learning rate and weight decay under
    which any encoder tensor the optimizer reached, or a BatchNorm statistic `model.train()`
    moved, shows."""
    base = tmp_path_factory.mktemp("frozen_sweep")
    result = run_train_in(
        base, "-m", *SEGMENTATION, f"model.pretrained={segmentation_run}", "trainer.epochs=1",
        "trainer.precision=bf16", "optimizer.lr=0.1", "optimizer.weight_decay=0.5",
        "freeze=backbone,partial", f"paths.log_dir={base}", own_dir=True,
    )  # fmt: skip
    assert result.returncode == 0, result.output[-3000:]
    [sweep] = (base / "multirun").glob("*/*/")
    jobs = [p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()]
    return {"sweep": sweep, **{load(j / "checkpoints/last.pt")["config"]["freeze"]["policy"]: j
                               for j in jobs}}  # fmt: skip


def test_a_sweep_summarises_its_jobs_by_miou_under_bf16(frozen_sweep):
    with (frozen_sweep["sweep"] / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert {row["monitor"] for row in rows} == {"val/miou"}
    assert all(0 <= float(row["test"]) <= 1 for row in rows)  # test/miou of each job
    for policy in ("backbone", "partial"):
        config = load(frozen_sweep[policy] / "checkpoints/last.pt")["config"]
        assert config["trainer"]["precision"] == "bf16"


def changed(run: Path, loaded: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> list[str]:
    """Tensors under `prefixes` that differ from the loaded weights (BatchNorm statistics too)."""
    mine = weights(run)
    keys = [k for k in mine if k.startswith(prefixes)]
    assert any(k.endswith("running_mean") for k in keys), "BatchNorm statistics must be compared"
    return [k for k in keys if not torch.equal(mine[k], loaded[k])]


@pytest.mark.parametrize(
    ("policy", "frozen", "trained"),
    [
        ("backbone", ("encoder.",), ("decoder.", "segmentation_head.")),
        ("partial", ("encoder.model.conv1", "encoder.model.bn1", "encoder.model.layer1.",
                     "encoder.model.layer2."), ("encoder.model.layer3.", "decoder.")),
    ],
)  # fmt: skip
def test_freezing_keeps_the_encoder_s_weights_and_batchnorm_statistics(
    frozen_sweep, segmentation_run, policy, frozen, trained
):
    loaded = weights(segmentation_run)
    assert not changed(frozen_sweep[policy], loaded, frozen), f"freeze={policy} moved them"
    assert changed(frozen_sweep[policy], loaded, trained), "nothing trained: this proves nothing"
