"""Files read back never run code or touch files outside their run; saves survive kills.

A finished tiny run is copied and its checkpoints tampered with: a config whose `_target_`s
load a pickle lying beside the checkpoint (`torch.load(weights_only=False)` runs its code, which
would create a marker file) or copy files (`shutil.copy`). resume=, eval.py, load_model,
export.py and model.pretrained=RUN must refuse them, or (pretrained) use weights only; the
marker never appears. A copied run directory resumes without touching the original's files,
and a run killed at each point of a save resumes with best.pt the epoch last.pt names.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, run_script, train_env

from finetune.engine.checkpoint import KILL_AT_ENV

TINY = (
    "model=test_resnet",
    "data.image_size=16",
    "data.batch_size=32",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.progress_bar=false",
    "logger=csv",
    "checkpoint.save_top_k=1",
)


class Payload:
    """Pickled, its loading opens (creates) the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, train_in) -> Path:
    base = tmp_path_factory.mktemp("trusted")
    result = train_in(base, *TINY, "trainer.epochs=1")
    assert result.returncode == 0, result.output[-2000:]
    return result.run_dir


def tampered_copy(run_dir: Path, tmp_path: Path, plant) -> tuple[Path, Path]:
    """A copy of the run whose checkpoints' configs carry `plant(config, evil, marker)`."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    marker = tmp_path / "code_ran"
    evil = copy / "checkpoints" / "evil.pkl"
    torch.save(Payload(marker), evil)
    for name in ("last.pt", "best.pt"):
        path = copy / "checkpoints" / name
        state = load(path)
        plant(state["config"], str(evil), str(tmp_path / "copied"))
        path.unlink()  # a hard link to the other: write each anew
        torch.save(state, path)
    return copy, marker


def pickle_in_scheduler(config: dict, evil: str, copied: str) -> None:
    config["scheduler"] = {"_target_": "torch.load", "f": evil, "weights_only": False}


def pickle_in_optimizer(config: dict, evil: str, copied: str) -> None:
    config["optimizer"]["betas"] = {"_target_": "torch.load", "f": evil, "weights_only": False}


def copy_in_data(config: dict, evil: str, copied: str) -> None:
    config["data"]["transform"] = {"_target_": "shutil.copy", "src": evil, "dst": copied}


def pickle_in_model_kwargs(config: dict, evil: str, copied: str) -> None:
    config["model"]["kwargs"]["act_layer"] = {"_target_": "torch.load", "f": evil}


def checkpoint_path_in_model_kwargs(config: dict, evil: str, copied: str) -> None:
    config["model"]["kwargs"]["checkpoint_path"] = evil


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "Error:" in line]


@pytest.mark.parametrize("plant", [pickle_in_scheduler, pickle_in_optimizer, copy_in_data])
def test_resume_refuses_a_planted_target_and_runs_nothing(finished_run, run_train, tmp_path, plant):
    copy, marker = tampered_copy(finished_run, tmp_path, plant)
    result = run_train(f"resume={copy}", run_dir=copy)
    assert result.returncode == 2, result.output[-2000:]
    assert len(error_lines(result.output)) == 1, result.output[-2000:]
    assert "_target_=" in result.output and "refused, nothing was run" in result.output
    assert not marker.exists() and not (tmp_path / "copied").exists()


def test_eval_refuses_a_planted_target(finished_run, tmp_path):
    copy, marker = tampered_copy(finished_run, tmp_path, pickle_in_scheduler)
    result = run_script("eval.py", f"ckpt={copy}", base=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "scheduler._target_=torch.load" in result.stdout + result.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "plant", [pickle_in_scheduler, pickle_in_model_kwargs, checkpoint_path_in_model_kwargs]
)
def test_load_model_and_export_refuse_a_planted_config(finished_run, tmp_path, plant):
    import finetune
    from finetune.safety.errors import FinetuneError

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import export
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    copy, marker = tampered_copy(finished_run, tmp_path, plant)
    with pytest.raises(FinetuneError, match="refused|an option of the timm loader"):
        finetune.load_model(str(copy))
    with pytest.raises(FinetuneError, match="refused|an option of the timm loader"):
        export.main([str(copy), "--out", str(tmp_path / "export"), "--formats", "torchscript"])
    assert not marker.exists() and not (tmp_path / "export").exists()


def test_pretrained_from_a_tampered_run_takes_weights_only(finished_run, run_train, tmp_path):
    copy, marker = tampered_copy(finished_run, tmp_path, pickle_in_scheduler)
    result = run_train(*TINY, "trainer.epochs=1", f"model.pretrained={copy}")
    assert result.returncode == 0, result.output[-2000:]
    assert not marker.exists()


def digests(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_copied_run_resumes_without_touching_the_original(finished_run, run_train, tmp_path):
    original = tmp_path / "original"
    shutil.copytree(finished_run, original)
    before = digests(original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    original.chmod(0o555)  # any write or delete there would fail the run
    (original / "checkpoints").chmod(0o555)
    try:
        result = run_train(f"resume={copy}", "trainer.epochs=3", run_dir=copy)
    finally:
        (original / "checkpoints").chmod(0o755)
        original.chmod(0o755)
    assert result.returncode == 0, result.output[-2000:]
    assert digests(original) == before
    last = load(copy / "checkpoints/last.pt")
    assert last["epoch"] == 3 and last["best"]["path"] == "best.pt"
    assert all("/" not in name for _, name in last["top_k"])
    assert sorted(p.name for p in (copy / "checkpoints").glob("epoch=*.pt")) == sorted(
        name for _, name in last["top_k"]
    )
    assert str(copy) in (copy / "summary.json").read_text()


@pytest.mark.parametrize("point", ["after_last", "after_best"])
def test_a_run_killed_during_a_save_resumes_with_the_best_it_names(run_train, tmp_path, point):
    # Epoch 1 is always best: a kill after last.pt leaves best.pt missing or stale.
    run_dir = tmp_path / "run"
    env_base = tmp_path / "env"
    env_base.mkdir()
    killed = subprocess.run(
        [sys.executable, "train.py", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT,
        env={**train_env(env_base), KILL_AT_ENV: f"{point}:1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stdout[-2000:]
    resumed = run_train(f"resume={run_dir}", run_dir=run_dir)
    assert resumed.returncode == 0, resumed.output[-2000:]
    last = load(run_dir / "checkpoints/last.pt")
    assert load(run_dir / "checkpoints/best.pt")["epoch"] == last["best"]["epoch"] == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("epoch=*.pt")) == sorted(
        name for _, name in last["top_k"]
    )
