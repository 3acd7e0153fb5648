"""`python train.py` end to end in a subprocess: the run-directory contract, file by file."""

from __future__ import annotations

import csv
import json
import math
import re
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = ("model=test_resnet", "trainer.epochs=3")
DIGITS_5_TO_9 = 182 + 181 + 179 + 174 + 180


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, train_in):
    """One small real run (test_resnet, 3 epochs on digits), shared by the contract tests."""
    result = train_in(tmp_path_factory.mktemp("tiny"), *TINY)
    assert result.returncode == 0, result.output[-3000:]
    return result


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def read_metrics(run_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    header = rows[0]
    assert all(len(row) == len(header) for row in rows), "ragged metrics.csv"
    return header, [dict(zip(header, row, strict=True)) for row in rows[1:]]


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_hydra_records(tiny_run) -> None:
    hydra_dir = tiny_run.run_dir / ".hydra"
    assert load_yaml(hydra_dir / "config.yaml")["model"]["name"] == "test_resnet"
    assert set(TINY) <= set(load_yaml(hydra_dir / "overrides.yaml"))
    hydra = load_yaml(hydra_dir / "hydra.yaml")["hydra"]
    assert Path(hydra["runtime"]["output_dir"]) == tiny_run.run_dir


def test_train_log(tiny_run) -> None:
    log = (tiny_run.run_dir / "train.log").read_text()
    for epoch in (1, 2, 3):
        assert re.search(rf"epoch {epoch}/3 \| train/loss \d", log), log[-2000:]
    assert "Model summary" in log and "Total params" in log  # torchinfo's table
    assert "Traceback" not in tiny_run.output


def test_hparams(tiny_run) -> None:
    hparams = load_yaml(tiny_run.run_dir / "hparams.yaml")
    config, facts = hparams["config"], hparams["run"]
    assert config["model"]["name"] == "test_resnet" and config["trainer"]["epochs"] == 3
    assert config["paths"]["output_dir"] == str(tiny_run.run_dir)
    if (REPO_ROOT / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", facts["git_commit"]), facts["git_commit"]
    assert facts["versions"]["torch"] == torch.__version__.split("+")[0]
    assert {"python", "timm", "torchvision"} <= set(facts["versions"])
    params = facts["parameters"]
    assert params["total"] == params["trainable"] > 0
    # Offline with an empty cache, `auto` trains from random init and says so.
    assert facts["model"]["pretrained_source"] == "random init (auto: weights unavailable)"
    assert facts["model"]["pretrained_loaded"] is False and facts["model"]["notes"]
    assert facts["classes"] == [str(d) for d in range(10)]
    assert sum(facts["split_sizes"].values()) == 1797
    assert {"mean", "std", "interpolation"} <= set(facts["preprocessing"])


def test_metrics_csv(tiny_run) -> None:
    header, rows = read_metrics(tiny_run.run_dir)
    assert header[:2] == ["epoch", "step"]
    assert {"train/loss", "val/loss", "val/acc", "val/f1", "lr"} <= set(header)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    steps = [int(row["step"]) for row in rows]
    assert steps[0] > 0 and steps == [steps[0] * e for e in (1, 2, 3)]
    for row in rows:
        assert 0 <= float(row["val/acc"]) <= 1 and 0 <= float(row["val/f1"]) <= 1
        for key in ("train/loss", "val/loss", "lr"):
            assert math.isfinite(float(row[key])) and float(row[key]) > 0, (key, row)
    assert float(rows[-1]["train/loss"]) < float(rows[0]["train/loss"])


def test_summary(tiny_run) -> None:
    summary = json.loads((tiny_run.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_done"] == 3
    assert summary["wall_time_s"] > 0
    _, rows = read_metrics(tiny_run.run_dir)
    best_acc = max(float(row["val/acc"]) for row in rows)
    assert summary["best"]["score"] == pytest.approx(best_acc, abs=1e-5)
    best_path = Path(summary["best_checkpoint"])
    assert best_path == tiny_run.run_dir / "checkpoints" / "best.pt" and best_path.is_file()
    test = summary["test"]
    assert {"test/loss", "test/acc", "test/f1"} <= set(test)
    assert 0.5 <= test["test/acc"] <= 1, "3 epochs of test_resnet should beat chance by far"
    # Start-up in its phases, each its own: cutting the splits is not counted as the model.
    phases = ["imports", "splits", "model", "data", "setup", "first_step", "total"]
    assert list(summary["startup_s"]) == phases


def test_checkpoints(tiny_run) -> None:
    checkpoints = tiny_run.run_dir / "checkpoints"
    last, best = load_ckpt(checkpoints / "last.pt"), load_ckpt(checkpoints / "best.pt")
    for state in (last, best):
        assert {"epoch", "model_state_dict", "optimizer_state_dict", "loss"} <= set(state)
        assert {"state", "param_groups"} <= set(state["optimizer_state_dict"])
        assert math.isfinite(state["loss"])
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model_state_dict"])
    assert last["epoch"] == 3
    summary = json.loads((tiny_run.run_dir / "summary.json").read_text())
    assert best["epoch"] == summary["best"]["epoch"]
    top_k = sorted(checkpoints.glob("epoch=*.pt"))
    assert 1 <= len(top_k) <= 3
    for path in top_k:
        assert re.fullmatch(r"epoch=\d{3}-val_loss=\d\.\d{4}-val_acc=\d\.\d{4}\.pt", path.name)
    for path in checkpoints.glob("*.pt"):
        load_ckpt(path)  # every checkpoint opens without unpickling code


def test_safetensors_holds_the_best_weights(tiny_run) -> None:
    checkpoints = tiny_run.run_dir / "checkpoints"
    best = load_ckpt(checkpoints / "best.pt")["model_state_dict"]
    with safe_open(str(checkpoints / "model.safetensors"), "pt") as handle:
        metadata = handle.metadata()
        assert set(handle.keys()) == set(best)
        for key in best:
            assert torch.equal(handle.get_tensor(key), best[key]), key
    assert metadata["model"] == "test_resnet"
    assert metadata["classes"].split(",") == [str(d) for d in range(10)]


def test_tensorboard_scalars(tiny_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    directory = tiny_run.run_dir / "tensorboard"
    assert list(directory.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(directory))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/acc", "lr"} <= scalars, scalars
    assert len(events.Scalars("val/acc")) == 3


def write_weights(path: Path, num_classes: int) -> dict[str, torch.Tensor]:
    """A test_resnet state dict in `path` (.safetensors), as a user's download would be."""
    torch.manual_seed(123)
    state = timm.create_model("test_resnet", num_classes=num_classes).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return state


# lr=0 leaves the loaded weights as they were, so best.pt shows what was loaded.
FROZEN_FAST = ("model=test_resnet", "debug=fast", "optimizer.lr=0", "logger=csv")


def test_pretrained_from_a_weights_file(tmp_path: Path, run_train) -> None:
    path = tmp_path / "imagenet_like.safetensors"
    source = write_weights(path, num_classes=7)  # another head size than digits' 10
    code, output, run_dir = run_train(*FROZEN_FAST, f"model.pretrained={path}")
    assert code == 0, output[-3000:]
    assert "replaced" in output
    model = load_yaml(run_dir / "hparams.yaml")["run"]["model"]
    assert model["pretrained_source"] == f"file:{path.resolve()}"
    assert model["pretrained_loaded"] is True
    assert any("fc.weight" in note for note in model["notes"])
    loaded = load_ckpt(run_dir / "checkpoints" / "best.pt")["model_state_dict"]
    assert torch.equal(loaded["conv1.0.weight"], source["conv1.0.weight"])
    assert loaded["fc.weight"].shape[0] == 10


def test_pretrained_from_an_earlier_run_dir(tiny_run, run_train) -> None:
    earlier = tiny_run.run_dir
    before = (earlier / "checkpoints" / "best.pt").read_bytes()
    code, output, run_dir = run_train(*FROZEN_FAST, f"model.pretrained={earlier}")
    assert code == 0, output[-3000:]
    model = load_yaml(run_dir / "hparams.yaml")["run"]["model"]
    # The file actually loaded, not just the directory given.
    best = (earlier / "checkpoints" / "best.pt").resolve()
    assert model["pretrained_source"] == f"file:{best}" and model["pretrained_loaded"] is True
    source = load_ckpt(earlier / "checkpoints" / "best.pt")["model_state_dict"]
    loaded = load_ckpt(run_dir / "checkpoints" / "best.pt")["model_state_dict"]
    assert torch.equal(loaded["conv1.0.weight"], source["conv1.0.weight"])
    assert torch.equal(loaded["fc.weight"], source["fc.weight"])
    assert (earlier / "checkpoints" / "best.pt").read_bytes() == before


def test_class_subset(run_train) -> None:
    code, output, run_dir = run_train(
        "model=test_resnet", "debug=fast", "data.classes=[5,6,7,8,9]", "logger=csv"
    )
    assert code == 0, output[-3000:]
    facts = load_yaml(run_dir / "hparams.yaml")["run"]
    assert facts["classes"] == ["5", "6", "7", "8", "9"]
    assert facts["model"]["num_classes"] == 5
    assert sum(facts["split_sizes"].values()) == DIGITS_5_TO_9
    best = load_ckpt(run_dir / "checkpoints" / "best.pt")["model_state_dict"]
    assert best["fc.weight"].shape[0] == 5
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_image_folder(image_tree: Path, run_train) -> None:
    code, output, run_dir = run_train(
        "model=test_resnet",
        "model.pretrained=false",
        "data=image_folder",
        f"data.root={image_tree}",
        "data.image_size=32",
        "data.batch_size=8",
        "data.num_workers=2",
        "trainer.epochs=2",
    )
    assert code == 0, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["classes"] == ["a", "b", "c"]
    assert "val" in summary["test_split"]  # the tree has no test/: say where test came from
    assert 0 <= summary["test"]["test/acc"] <= 1
    facts = load_yaml(run_dir / "hparams.yaml")["run"]
    assert facts["split_sizes"] == {"train": 24, "val": 12, "test": 12}
    rows = read_metrics(run_dir)[1]
    assert len(rows) == 2
    # No second pass over the val samples: test/* are the tested epoch's val/* figures.
    assert "test/* are the tested epoch's val/* figures" in output
    best_row = rows[summary["best"]["epoch"] - 1]
    assert summary["test"]["test/acc"] == pytest.approx(float(best_row["val/acc"]), abs=1e-6)


def test_two_runs_in_one_second_get_their_own_dirs(tmp_path: Path, start_train_here) -> None:
    log_dir = tmp_path / "outputs"
    args = ("model=test_resnet", "debug=fast", "logger=csv", f"paths.log_dir={log_dir}")
    time.sleep(1.02 - time.time() % 1)  # start both early in one wall-clock second
    processes = [start_train_here(*args), start_train_here(*args)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
    run_dirs = sorted(p for p in log_dir.glob("*/*") if p.is_dir())
    assert len(run_dirs) == 2, run_dirs
    names = [p.name for p in run_dirs]
    if len({p.parent for p in run_dirs}) == 1 and names[0] in names[1]:
        assert names[1] == f"{names[0]}_1"  # same second: the second one takes a suffix
    for run_dir in run_dirs:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and Path(summary["run_dir"]) == run_dir
        assert (run_dir / "train.log").read_text().count("epoch 1/1 |") == 1
        assert len(read_metrics(run_dir)[1]) == 1


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~70 s alone on 2 cores; far more when the cores are shared
def test_the_embedded_default(run_train) -> None:
    """`python train.py` exactly as the README says: resnet18 on digits, test acc >= 0.97."""
    code, output, run_dir = run_train(timeout=1700, one_thread=False)  # as a user runs it
    assert code == 0, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert load_yaml(run_dir / ".hydra" / "config.yaml")["model"]["name"] == "resnet18"
    assert summary["test"]["test/acc"] >= 0.97, summary["test"]
