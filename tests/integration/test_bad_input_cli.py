"""Bad input through the real `train.py`: exit 2, exactly one error line naming the value, no
traceback, and no earlier run directory touched."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import pytest
from conftest import error_lines

from finetune.safety.errors import EXIT_BAD_INPUT, EXIT_DATA_FAILED

# (overrides, text the error line must hold); {tree} is a tiny image tree prepared per case.
CASES = {
    "unknown model": (["model.name=resnet181"], "close timm names: resnet18"),
    "unknown group option": (["model=nope"], "model/nope"),  # Hydra's error, one line too
    "malformed override": (["optimizer.lr=["], "optimizer.lr=["),
    "image_folder without root": (["data=image_folder"], "data.root"),
    "missing folder": (["data=image_folder", "data.root={tree}/absent"], "{tree}/absent"),
    "empty class folder": (["data=image_folder", "data.root={tree}"], "{tree}/train/empty"),
    "unreadable image": (["data=image_folder", "data.root={tree}"], "{tree}/train/b/broken.png"),
    "pretrained true offline": (["model.pretrained=true"], "model.pretrained=true"),
    "pretrained missing file": (["model.pretrained=/no/such/file"], "/no/such/file"),
    "zero epochs": (["trainer.epochs=0"], "trainer.epochs=0"),
    "negative batch size": (["data.batch_size=-1"], "data.batch_size=-1"),
}


def make_earlier_runs(log_dir: Path, seconds: int = 90) -> None:
    """Finished-looking run directories for every second from now on, as a busy sweep leaves.

    A bad run that reused a timestamped directory instead of taking a fresh one would touch one.
    """
    now = datetime.datetime.now()
    for offset in range(-2, seconds):
        moment = now + datetime.timedelta(seconds=offset)
        run = log_dir / moment.strftime("%Y-%m-%d") / moment.strftime("%H-%M-%S")
        (run / "checkpoints").mkdir(parents=True)
        (run / "summary.json").write_text('{"status": "completed"}\n')
        (run / "train.log").write_text("epoch 1/1 | an earlier run\n")
        (run / "checkpoints" / "last.pt").write_bytes(b"earlier weights")


def snapshot(log_dir: Path) -> dict[str, tuple[int, str]]:
    """Every file under log_dir: (mtime_ns, content hash)."""
    return {
        str(path.relative_to(log_dir)): (
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(log_dir.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case: str, tmp_path: Path, make_image_tree, run_train) -> None:
    tree = make_image_tree(tmp_path / "tree", {"train": 2, "val": 2}, ("a", "b"))
    if case == "empty class folder":
        (tree / "train" / "empty").mkdir()
    if case == "unreadable image":
        (tree / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    overrides, expected = CASES[case]
    overrides = [item.format(tree=tree) for item in overrides]
    log_dir = tmp_path / "outputs"
    make_earlier_runs(log_dir)
    before = snapshot(log_dir)

    # No hydra.run.dir: the run picks its own timestamped directory as a user's would.
    code, output, _ = run_train(
        "model=test_resnet",
        "data.image_size=16",
        f"paths.log_dir={log_dir}",
        *overrides,
        own_dir=True,
    )

    # An image found unreadable while training is a data fault (README: exit 6, data_error).
    expected_code = EXIT_DATA_FAILED if case == "unreadable image" else EXIT_BAD_INPUT
    assert code == expected_code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = error_lines(output)
    assert len(lines) == 1, f"not exactly one error line:\n{output[-3000:]}"
    assert expected.format(tree=tree) in lines[0], lines[0]
    assert "[ERROR]" not in output.replace(lines[0], ""), output[-3000:]
    after = snapshot(log_dir)
    assert {key: after[key] for key in before} == before, "an earlier run directory changed"


@pytest.mark.parametrize(
    ("overrides", "fix"),
    [
        (["data=synthetic_reviews"], "add task=text_classification"),
        (["task=text_classification", "data=digits"], "use data=synthetic_reviews"),
    ],
    ids=["texts under an image task", "images under the text task"],
)
def test_a_task_refuses_data_it_cannot_read(overrides, fix, run_train) -> None:
    """Refused by the config check, before torch loads: one line that names the fix."""
    code, output, _ = run_train(*overrides)
    assert code == EXIT_BAD_INPUT, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = error_lines(output)
    assert len(lines) == 1 and fix in lines[0], output[-3000:]
