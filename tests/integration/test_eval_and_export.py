"""eval.py reproduces a run's test metrics; load_model and the exports compute what a model built
by hand (timm.create_model + load_state_dict) computes, and that one scores the recorded test
accuracy: none is checked only against the project's own code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import error_lines, run_script

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


@pytest.mark.parametrize("run", ["finished_run", "ema_judged_run"])
def test_eval_reproduces_the_test_metrics(run, request, tmp_path):
    run_dir = request.getfixturevalue(run)  # ema_judged_run: the EMA's weights, both times
    result = run_script("eval.py", f"ckpt={run_dir}", base=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    written = json.loads((run_dir / "checkpoints/best.eval-test.json").read_text())
    trained = json.loads((run_dir / "summary.json").read_text())["test"]
    assert written["metrics"] == pytest.approx(trained, abs=1e-6)
    assert "test/acc:" in result.stdout


def test_eval_of_a_missing_checkpoint_is_a_clear_error(tmp_path):
    result = run_script("eval.py", f"ckpt={tmp_path}/nothing", base=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = error_lines(result.stdout + result.stderr)
    assert f"ckpt={tmp_path}/nothing" in line, line


def test_eval_with_an_unknown_option_is_one_line_and_exit_2(tmp_path):
    result = run_script("eval.py", "ckpt=x", "data=nope", base=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = error_lines(result.stdout + result.stderr)
    assert "data/nope" in line and "digits" in line, line


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


def independent_model(run_dir):
    """The run's best weights in a model built by hand: timm.create_model + load_state_dict."""
    import timm
    import torch
    import yaml

    state = torch.load(run_dir / "checkpoints/best.pt", map_location="cpu", weights_only=True)
    config = yaml.safe_load((run_dir / ".hydra/config.yaml").read_text())
    model = timm.create_model(config["model"]["name"], num_classes=len(state["classes"]))
    model.load_state_dict(state["model_state_dict"])  # strict: every tensor, no extra one
    return model.eval()


def split_inputs(run_dir):
    """The run's test split, preprocessed as its evaluation did: (inputs, labels)."""
    import torch
    from omegaconf import OmegaConf

    from finetune.data import build_splits
    from finetune.data.loaders import transforms_for
    from finetune.engine.evaluation import model_from_checkpoint
    from finetune.models.weights import safe_torch_load

    cfg = OmegaConf.load(run_dir / ".hydra/config.yaml")
    _, prep, _ = model_from_checkpoint(safe_torch_load(run_dir / "checkpoints/best.pt"))
    split = build_splits(cfg.data, cfg.seed).test
    split.transform = transforms_for("tensor", prep, augment=False)[1]
    return torch.stack([split[i][0] for i in range(len(split))]), split.labels


@pytest.fixture(scope="module")
def reference(finished_run):
    """The independent model's logits on the test split, and its accuracy there."""
    import torch

    inputs, labels = split_inputs(finished_run)
    with torch.no_grad():
        logits = independent_model(finished_run)(inputs)
    return inputs, logits, (logits.argmax(1) == labels).float().mean().item()


def test_the_hand_built_model_reproduces_the_recorded_test_accuracy(finished_run, reference):
    recorded = json.loads((finished_run / "summary.json").read_text())["test"]["test/acc"]
    assert reference[2] == pytest.approx(recorded, abs=1e-6)


def test_load_model_is_the_hand_built_model(finished_run, reference):
    import torch

    import finetune

    inputs, expected, _ = reference
    model, _, classes = finetune.load_model(str(finished_run))
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), expected)
    assert classes == json.loads((finished_run / "summary.json").read_text())["classes"]


def test_exports_compute_the_hand_built_model(finished_run, reference, tmp_path):
    import torch

    result = run_script(
        "scripts/export.py", str(finished_run), "--out", str(tmp_path / "x"),
        "--formats", "torchscript", "export", base=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    inputs, expected, _ = reference
    scripted = torch.jit.load(tmp_path / "x/model.torchscript.pt")
    program = torch.export.load(tmp_path / "x/model.pt2").module()
    with torch.no_grad():
        for name, exported in (("torchscript", scripted), ("torch.export", program)):
            got = exported(inputs)  # the whole test split in one batch
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4, msg=name)
            assert torch.equal(got.argmax(1), expected.argmax(1)), name


@pytest.fixture(scope="module")
def ema_judged_run(tmp_path_factory, train_in):
    """A run whose best checkpoint is picked by its EMA's score (monitor=val_ema/acc)."""
    base = tmp_path_factory.mktemp("ema")
    result = train_in(base, *TINY, "trainer.ema_decay=0.5", "monitor=val_ema/acc")
    assert result.returncode == 0, result.output[-2000:]
    return result.run_dir


def test_a_run_judged_by_its_ema_is_tested_and_exported_with_the_ema_weights(ema_judged_run):
    """The recorded test loss is the hand-built EMA model's, and model.safetensors holds the EMA
    weights: the checkpoint was best by them, so they are the run's result."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    run_dir = ema_judged_run
    best = torch.load(run_dir / "checkpoints/best.pt", map_location="cpu", weights_only=True)
    trained, averaged = best["model_state_dict"], best["ema_state_dict"]
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained)  # told apart
    exported = load_file(run_dir / "checkpoints/model.safetensors")
    assert exported.keys() == averaged.keys()
    assert all(torch.equal(exported[k], averaged[k]) for k in averaged)

    inputs, labels = split_inputs(run_dir)
    model = independent_model(run_dir)
    model.load_state_dict(averaged)
    with torch.no_grad():
        loss = F.cross_entropy(model(inputs), labels).item()
    recorded = json.loads((run_dir / "summary.json").read_text())["test"]
    assert loss == pytest.approx(recorded["test/loss"], abs=1e-5)
