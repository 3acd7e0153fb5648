"""The task seam end to end: multi-label trains, resumes bitwise, evaluates and exports like
classification; a task defined outside the project runs on the unchanged engine."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, run_script, train_env

MULTILABEL = (
    "task=multilabel",
    "data=digits_multilabel",
    "model=test_resnet",
    "data.image_size=16",
    "data.batch_size=32",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.progress_bar=false",
    "logger=csv",
)
FIXTURES = Path(__file__).parent.parent / "fixtures"


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory, train_in):
    """Two epochs straight: the reference for resume, eval and export."""
    base = tmp_path_factory.mktemp("multilabel")
    result = train_in(base, *MULTILABEL, "trainer.epochs=2")
    assert result.returncode == 0, result.output[-2000:]
    return result.run_dir


def test_multilabel_monitors_map_and_tests_the_best_checkpoint(multilabel_run):
    summary = json.loads((multilabel_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["monitor"] == "val/map"
    assert set(summary["test"]) == {
        "test/loss",
        "test/map",
        "test/f1_macro",
        "test/f1_micro",
        "test/exact_match",
    }
    assert summary["best"]["path"].endswith("best.pt")
    state = load(multilabel_run / "checkpoints/best.pt")
    assert state["config"]["task"]["_target_"] == "finetune.tasks.multilabel.MultiLabel"
    assert state["config"]["loss"]["_target_"] == "torch.nn.BCEWithLogitsLoss"


def test_multilabel_report_agrees_with_the_test_metrics(multilabel_run):
    """Per label at the task's threshold: its macro F1 and mean AP are test/f1_macro, test/map."""
    summary = json.loads((multilabel_run / "summary.json").read_text())
    report = multilabel_run / "report"
    assert summary["report"] == str(report / "index.html")
    with (report / "per_label.csv").open() as f:
        labels = list(csv.DictReader(f))
    assert [row["class"] for row in labels] == [str(i) for i in range(10)]
    macro_f1 = sum(float(row["f1"]) for row in labels) / len(labels)
    mean_ap = sum(float(row["average_precision"]) for row in labels) / len(labels)
    assert macro_f1 == pytest.approx(summary["test"]["test/f1_macro"], abs=1e-5)
    assert mean_ap == pytest.approx(summary["test"]["test/map"], abs=1e-5)
    cells = (report / "confusion.csv").read_text().splitlines()
    assert cells[0] == "TN,FP,FN,TP" and len(cells) == 11
    images = {sum(int(c) for c in line.split(",")) for line in cells[1:]}
    assert len(images) == 1  # every label decided once per test image
    calibration = json.loads((report / "calibration.json").read_text())
    assert calibration["temperature"] > 0 and 0 <= calibration["ece"] <= 1
    for name in ("confusion.png", "reliability.png", "top_losses.png", "top_losses.csv"):
        assert (report / name).stat().st_size > 0, name


def test_multilabel_resumes_bitwise(multilabel_run, run_train):
    first = run_train(*MULTILABEL, "trainer.epochs=1", "scheduler=none")
    assert first.returncode == 0, first.output[-2000:]
    resumed = run_train(f"resume={first.run_dir}", "trainer.epochs=2")
    assert resumed.returncode == 0, resumed.output[-2000:]
    straight = run_train(
        *MULTILABEL, "trainer.epochs=2", "scheduler=none", run_dir=first.run_dir.parent / "straight"
    )
    assert straight.returncode == 0, straight.output[-2000:]
    a = load(first.run_dir / "checkpoints/last.pt")
    b = load(straight.run_dir / "checkpoints/last.pt")
    for key in ("model_state_dict", "optimizer_state_dict"):
        assert repr(a[key].keys()) == repr(b[key].keys())
    assert all(torch.equal(a["model_state_dict"][k], v) for k, v in b["model_state_dict"].items())
    assert a["metrics"] == b["metrics"]


def test_eval_reproduces_the_multilabel_test_metrics(multilabel_run, tmp_path):
    result = run_script("eval.py", f"ckpt={multilabel_run}", base=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads((multilabel_run / "checkpoints/best.eval-test.json").read_text())
    trained = json.loads((multilabel_run / "summary.json").read_text())["test"]
    assert written["metrics"] == pytest.approx(trained, abs=1e-6)


def test_export_of_a_multilabel_run_matches(multilabel_run, tmp_path):
    out = tmp_path / "x"
    result = run_script("scripts/export.py", str(multilabel_run), "--out", str(out),
                        "--formats", "torchscript", base=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    exported = torch.jit.load(str(out / "model.torchscript.pt"))
    assert exported(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_a_task_from_outside_the_project_runs_on_the_unchanged_engine(tmp_path):
    """tests/fixtures/parity_task.py subclasses Task; nothing in src/ names it."""
    env = train_env(tmp_path)
    env["PYTHONPATH"] = f"{FIXTURES}:{env.get('PYTHONPATH', '')}"
    overrides = [
        "task._target_=parity_task.Parity",
        "task.monitor=val/odd_acc",
        "model=test_resnet",
        "data.image_size=16",
        "data.batch_size=32",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2",
        "trainer.progress_bar=false",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]

    def train(*more: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "train.py", *overrides, *more], cwd=REPO_ROOT,
                              env=env, capture_output=True, text=True, timeout=600)  # fmt: skip

    first = train("trainer.epochs=1")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    # A task outside conf/task/ is named again on resume: a checkpoint never chooses code.
    resumed = train(f"resume={tmp_path / 'run'}", "trainer.epochs=2")
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 2
    assert set(summary["test"]) == {"test/loss", "test/odd_acc"}
    assert load(tmp_path / "run/checkpoints/last.pt")["model_state_dict"]["fc.weight"].shape[0] == 2


def test_a_multilabel_sweep_summarises_its_jobs_by_map(run_train, tmp_path):
    result = run_train(
        "-m", *MULTILABEL, "trainer.epochs=1", f"paths.log_dir={tmp_path}",
        "task.threshold=0.3,0.6", own_dir=True,
    )  # fmt: skip
    assert result.returncode == 0, result.output[-3000:]
    [summary_csv] = (tmp_path / "multirun").glob("*/*/summary.csv")
    rows = list(csv.DictReader(summary_csv.open()))
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert {row["monitor"] for row in rows} == {"val/map"}
    assert all(float(row["test"]) >= 0 for row in rows)  # test/map of each job
