"""Shared test set-up: offline always, a way to run train.py for real, and tiny image trees.

The environment is set at import, before anything imports huggingface_hub or wandb, so that
in-process tests and every subprocess they start see it: tests never touch the network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from omegaconf import DictConfig

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
# A tiny run takes ~10 s here, but minutes on a 2-core machine shared with other jobs; the
# limit stays under pytest-timeout's 600 s so a stuck run fails with its output shown.
TRAIN_TIMEOUT_S = 540


def compose_train(tmp_path: Path, *overrides: str, hydra_config: bool = False) -> DictConfig:
    """Compose conf/train.yaml as train.py would, with the log and data paths in tmp_path."""
    from hydra import compose, initialize_config_dir

    from finetune.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[f"paths.log_dir={tmp_path}", f"paths.data_dir={tmp_path}", *overrides],
            return_hydra_config=hydra_config,
        )


class TrainResult(NamedTuple):
    """What a `python train.py ...` subprocess left: unpack as (returncode, output, run_dir)."""

    returncode: int
    output: str
    run_dir: Path | None


def train_env(base: Path, one_thread: bool = True) -> dict[str, str]:
    """The subprocess environment: offline, empty model caches, short Hydra errors.

    Empty HF/torch caches make `pretrained=auto` behave the same on every machine, and
    HYDRA_FULL_ERROR would turn the one-line errors under test into tracebacks. `one_thread`
    keeps torch to one intra-op thread (unless OMP_NUM_THREADS is set): tiny runs gain little
    from two, and on cores shared with other jobs two threads per process thrash (measured
    here under load: test_resnet 463 img/s with one thread, 97 with two).
    """
    env = dict(os.environ)
    if one_thread:
        env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(
        HF_HUB_OFFLINE="1",
        WANDB_MODE="offline",
        HF_HOME=str(base / "hf_home"),
        TORCH_HOME=str(base / "torch_home"),
        TORCHINDUCTOR_CACHE_DIR=str(base / "inductor_cache"),  # trainer.compile's kernels
        PYTHONUNBUFFERED="1",
    )
    return env


def start_train(
    base: Path, *overrides: str, run_dir: Path | None = None, one_thread: bool = True
) -> subprocess.Popen:
    """Start `python train.py overrides...` from the repo root; output merged into stdout.

    With `run_dir` the run goes exactly there (hydra.run.dir); without it the overrides must
    say where (paths.log_dir=...), never the repository's outputs/.
    """
    args = [sys.executable, "train.py", *overrides]
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    return subprocess.Popen(
        args,
        cwd=REPO_ROOT,
        env=train_env(base, one_thread),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_train_in(
    base: Path,
    *overrides: str,
    run_dir: Path | None = None,
    own_dir: bool = False,
    one_thread: bool = True,
    timeout: float = TRAIN_TIMEOUT_S,
) -> TrainResult:
    """Run train.py to the end in `base/run` (or `run_dir`) and return what it left.

    `own_dir=True` gives no hydra.run.dir: the run picks its timestamped directory under
    paths.log_dir as a user's would (pass paths.log_dir), and run_dir comes back None.
    """
    run_dir = None if own_dir else run_dir or base / "run"
    process = start_train(base, *overrides, run_dir=run_dir, one_thread=one_thread)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"train.py {' '.join(overrides)} ran past {timeout}s:\n{output[-3000:]}")
    found = run_dir if run_dir is not None and run_dir.exists() else None
    return TrainResult(process.returncode, output, found)


def run_script(*args: str, base: Path) -> subprocess.CompletedProcess:
    """`python ARGS...` from the repo root (eval.py, predict.py, scripts/...), output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=train_env(base),
        capture_output=True,
        text=True,
        timeout=TRAIN_TIMEOUT_S,
    )


@pytest.fixture
def run_train(tmp_path: Path) -> Callable[..., TrainResult]:
    """`run_train("model=test_resnet", ...)` -> (returncode, output, run_dir) in tmp_path/run."""

    def run(*overrides: str, **kwargs) -> TrainResult:
        return run_train_in(tmp_path, *overrides, **kwargs)

    return run


def torchrun(base: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone train.py ...` on CPU (gloo), in the tests' environment."""
    torchrun_bin = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun_bin) if torchrun_bin.exists() else shutil.which("torchrun"),
        f"--nproc_per_node={nproc}",
        "--standalone",
        "train.py",
        *args,
    ]
    return subprocess.run(
        command,
        cwd=REPO_ROOT,
        env=train_env(base),
        capture_output=True,
        text=True,
        timeout=TRAIN_TIMEOUT_S,
    )


@pytest.fixture(scope="session")
def train_in() -> Callable[..., TrainResult]:
    """`run_train_in(base, *overrides)`, for fixtures wider than one test (a shared run)."""
    return run_train_in


def error_lines(output: str) -> list[str]:
    """The lines that report an error: "[time][ERROR] Error: ..." once Hydra set up a job's
    logging, "[time][HYDRA] Error: ..." in a sweep's, "Error: ..." before either."""
    pattern = r"(\[[^\]]*\]\[(ERROR|HYDRA)\] )?Error: "
    return [line for line in output.splitlines() if re.match(pattern, line)]


# Processes (Linux /proc): what a train.py started, and what each one runs.


@pytest.fixture
def start_train_here(tmp_path: Path) -> Callable[..., subprocess.Popen]:
    """`start_train(tmp_path, *overrides)`: a train.py process left running (concurrency)."""

    def start(*overrides: str, run_dir: Path | None = None) -> subprocess.Popen:
        return start_train(tmp_path, *overrides, run_dir=run_dir)

    return start


def write_image_tree(root: Path, splits: dict[str, int], classes: tuple[str, ...]) -> Path:
    """PNG images in root/<split>/<class>/ (or root/<class>/ for split ""), 16x16, seeded.

    Each class has its own mean colour, so a model can learn something from a few images.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in splits.items():
        for index, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.normal(60 + 60 * index, 30, size=(16, 16, 3)).clip(0, 255)
                Image.fromarray(pixels.astype("uint8")).save(folder / f"{i}.png")
    return root


@pytest.fixture
def make_image_tree() -> Callable[..., Path]:
    """The tree writer itself, for layouts other than `image_tree`'s."""
    return write_image_tree


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """A tiny ImageFolder tree: train/ (8 per class) and val/ (4 per class), classes a, b, c."""
    return write_image_tree(tmp_path / "images", {"train": 8, "val": 4}, ("a", "b", "c"))


# The tiny segmentation run of tests/integration/test_segmentation*.py: 32-pixel digit canvases,
# timm's test_resnet as the encoder, 3 steps an epoch.
SEGMENTATION = (
    "task=segmentation",
    "model.encoder=tu-test_resnet",
    "model.encoder_weights=null",
    "model.pretrained=false",
    "+model.kwargs.decoder_channels=[8,8,8,8,8]",
    "data.image_size=32",
    "data.digit_size=12",
    "data.canvases_per_digit=0.1",
    "data.batch_size=16",
    "trainer.limit_train_batches=3",
    "trainer.progress_bar=false",
    "logger=tensorboard",
    "logger.tensorboard.images=4",
    "logger.tensorboard.histogram_every_n_epochs=0",
    "logger.tensorboard.pr_curve_classes=0",
)


@pytest.fixture(scope="session")
def segmentation_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two epochs straight: the run the segmentation tests read (and the resumes' reference)."""
    base = tmp_path_factory.mktemp("segmentation")
    result = run_train_in(base, *SEGMENTATION, "trainer.epochs=2")
    assert result.returncode == 0, result.output[-3000:]
    return result.run_dir
