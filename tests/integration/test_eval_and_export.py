"""eval.py reproduces a run's test metrics; load_model predicts; exports match the checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, train_env

TINY = (
    "model=test_resnet",
    "data.image_size=16",
    "trainer.epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.progress_bar=false",
    "logger=csv",
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, train_in):
    base = tmp_path_factory.mktemp("eval")
    result = train_in(base, *TINY)
    assert result.returncode == 0, result.output[-2000:]
    return result.run_dir


def run_script(*args: str, base) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=train_env(base),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_eval_reproduces_the_test_metrics(finished_run, tmp_path):
    result = run_script("eval.py", f"ckpt={finished_run}", base=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads((finished_run / "checkpoints/best.eval-test.json").read_text())
    trained = json.loads((finished_run / "summary.json").read_text())["test"]
    assert written["metrics"] == pytest.approx(trained, abs=1e-6)
    assert "test/acc:" in result.stdout


def test_eval_of_a_missing_checkpoint_is_a_clear_error(tmp_path):
    result = run_script("eval.py", f"ckpt={tmp_path}/nothing", base=tmp_path)
    assert result.returncode == 2
    assert "ckpt=" in result.stdout + result.stderr


def test_load_model_predicts_in_three_lines(finished_run):
    from PIL import Image
    from sklearn.datasets import load_digits

    import finetune

    model, transform, classes = finetune.load_model(str(finished_run))
    image = Image.fromarray((load_digits().images[0] * 16).astype(np.uint8))
    logits = model(transform(image).unsqueeze(0))
    assert logits.shape == (1, 10)
    assert classes == [str(d) for d in range(10)]
    assert not model.training


def test_export_matches_the_checkpoint(finished_run, tmp_path):
    result = run_script(
        "scripts/export.py",
        str(finished_run),
        "--out",
        str(tmp_path / "x"),
        "--formats",
        "torchscript",
        "export",
        base=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "torchscript: max |difference|" in result.stdout
    assert (tmp_path / "x/model.pt2").is_file()
