"""Whole runs on an image folder: this project's `train.py` against a bare hand-written loop.

    python scripts/benchmark.py --folder                       # test_resnet and resnet18, 3 runs
    python scripts/folder_benchmark.py --model test_resnet --runs 5 data.cache=none

What a new user waits for is a whole run on a folder of image files, not a training step on
tensors in memory. So this writes scikit-learn's digits as 32 px PNG class folders (1,437 train,
360 val, like an 80/20 split), and times, as separate processes in alternating order:

- `bare`: the loop anyone would write (torchvision ImageFolder, PIL decode, ToTensor,
  Normalize; SGD; validation and a `torch.save` checkpoint each epoch), in this file;
- `project`: `python train.py data=image_folder data.root=DIR ...` with CSV and TensorBoard.

Rows: training images/s (the train pass alone); images/s over whole epochs (train images per
second between one epoch's line and the next: validation, checkpoints and records included);
that rate as a share of the same process's training rate (the aim is 0.92); the seconds of
each epoch beyond its train pass (from those two rates: the work an epoch does whatever the
speed of training, so a faster loop or processor lowers the whole-epoch share of training but
not this); whole-process seconds (wall and CPU: on a machine shared with other jobs the CPU
seconds move less); the first optimizer step in seconds after the process started; the
process's minor page faults (with its data loader workers'). Ratios are of paired runs
(project over bare), medians over runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+")
ROWS = (
    "train_img_s",
    "epoch_img_s",
    "epoch_share",
    "epoch_extra_s",
    "process_s",
    "cpu_s",
    "first_step_s",
    "minor_faults_k",
)


def write_digits_folder(root: Path, size: int = 32) -> Path:
    """Digits as `size` px RGB PNGs in root/{train,val}/<class>/ (80/20, stratified, seed 0)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train, val = train_test_split(indices, test_size=0.2, stratify=digits.target, random_state=0)
    for split, chosen in (("train", train), ("val", val)):
        for i in chosen:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
            image = Image.fromarray(pixels).convert("RGB").resize((size, size), Image.BICUBIC)
            image.save(folder / f"{i:04d}.png")
    return root


def bare_folder_loop(root: Path, model_name: str, epochs: int, batch_size: int, out: Path) -> None:
    """The hand-written baseline; prints `first step` and `epoch k/N` lines as it goes."""
    import timm
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    tf = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    train = datasets.ImageFolder(str(root / "train"), tf)
    val = datasets.ImageFolder(str(root / "val"), tf)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(val, batch_size=batch_size)
    model = timm.create_model(model_name, num_classes=len(train.classes))
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    criterion = nn.CrossEntropyLoss()
    rates = []
    for epoch in range(1, epochs + 1):
        model.train()
        start, seen = time.perf_counter(), 0
        for images, targets in train_loader:
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if seen == 0 and epoch == 1:
                print("first step", flush=True)
            seen += images.shape[0]
        rates.append(seen / (time.perf_counter() - start))
        model.eval()
        correct = 0
        with torch.inference_mode():
            for images, targets in val_loader:
                correct += (model(images).argmax(1) == targets).sum().item()
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        torch.save(state, out.with_suffix(".pt"))
        print(f"epoch {epoch}/{epochs} val acc {correct / len(val):.4f}", flush=True)
    out.write_text(json.dumps({"train_img_s": rates}))


def timed_process(command: list[str], env: dict[str, str]) -> dict[str, float | list[float]]:
    """Run `command`; the wall time, when each line of interest arrived, and its page faults."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first_step, epoch_ends, output = None, [], []
    for line in process.stdout:
        output.append(line)
        now = time.perf_counter() - start
        if first_step is None and ("first step" in line or "first optimizer step" in line):
            first_step = now
        if EPOCH_LINE.search(line) and (" val acc " in line or "train/loss" in line):
            epoch_ends.append(now)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({process.returncode}):\n{''.join(output[-40:])}")
    return {
        "process_s": time.perf_counter() - start,
        "first_step_s": first_step,
        "epoch_ends": epoch_ends,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "minor_faults_k": usage.ru_minflt / 1000,
    }


def one_run(
    variant: str, model: str, root: Path, tmp: Path, args: argparse.Namespace
) -> dict[str, float]:
    """One process of `variant`; its rows (ROWS) as numbers."""
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS=str(args.threads)
    )
    out = tmp / f"{variant}-{time.monotonic_ns()}.json"
    if variant == "bare":
        command = [sys.executable, __file__, "--bare", str(root), "--model", model]
        command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
        command += ["--out", str(out)]
    else:
        command = [sys.executable, "train.py", "data=image_folder", f"data.root={root}"]
        command += [f"model={model}", "model.pretrained=false", f"trainer.epochs={args.epochs}"]
        command += [f"data.batch_size={args.batch_size}", "data.image_size=32", "optimizer=sgd"]
        command += ["logger=[csv,tensorboard]", "data.augment=false", "trainer.progress_bar=false"]
        command += [f"hydra.run.dir={out.with_suffix('')}", f"paths.log_dir={tmp}"]
        command += [f"paths.cache_dir={tmp / 'cache'}", *args.overrides]
    timing = timed_process(command, env)
    if variant == "bare":
        train_rates = json.loads(out.read_text())["train_img_s"]
    else:
        csv = (out.with_suffix("") / "metrics.csv").read_text().splitlines()
        column = csv[0].split(",").index("images_per_s")
        train_rates = [float(line.split(",")[column]) for line in csv[1:]]
    ends = timing["epoch_ends"]
    train_images = sum(1 for _ in (root / "train").rglob("*.png"))
    # Epoch 1 pays for warm-up (and fills a cache): the later epochs are the steady rate.
    train_rate = statistics.median(train_rates[1:] or train_rates)
    epoch_rate = train_images * (len(ends) - 1) / (ends[-1] - ends[0])
    return {
        "train_img_s": train_rate,
        "epoch_img_s": epoch_rate,
        "epoch_share": epoch_rate / train_rate,
        "epoch_extra_s": train_images / epoch_rate - train_images / train_rate,
        "process_s": timing["process_s"],
        "cpu_s": timing["cpu_s"],
        "first_step_s": timing["first_step_s"],
        "minor_faults_k": timing["minor_faults_k"],
    }


def compare(model: str, root: Path, tmp: Path, args: argparse.Namespace) -> str:
    """Alternating runs of bare and project; a table of medians and paired ratios."""
    found: dict[str, list[dict[str, float]]] = {"bare": [], "project": []}
    for run in range(args.runs):
        order = ["bare", "project"] if run % 2 == 0 else ["project", "bare"]
        for variant in order:
            found[variant].append(one_run(variant, model, root, tmp, args))
            rounded = {k: round(v, 2) for k, v in found[variant][-1].items()}
            print(f"  run {run + 1} {variant}: {rounded}", flush=True)
    lines = []
    for row in ROWS:
        bare = [r[row] for r in found["bare"]]
        project = [r[row] for r in found["project"]]
        ratio = statistics.median(p / b for p, b in zip(project, bare, strict=True))
        lines.append(
            f"{model:<14}{row:<16}{statistics.median(bare):>10.2f}"
            f"{statistics.median(project):>10.2f}{ratio:>8.2f}"
        )
    return "\n".join(lines)


def folder_table(models: Sequence[str], args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory(prefix="folder-benchmark-") as tmp:
        root = write_digits_folder(Path(tmp) / "digits")
        header = f"{'model':<14}{'row':<16}{'bare':>10}{'project':>10}{'ratio':>8}"
        title = (
            f"digits as 32 px PNG folders, batch {args.batch_size}, {args.epochs} epochs, "
            f"{args.threads} thread(s), median of {args.runs} runs; overrides {args.overrides}"
        )
        tables = [compare(model, root, Path(tmp), args) for model in models]
        return "\n".join([title, header, *tables])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="+", default=["test_resnet", "resnet18"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each process")
    parser.add_argument("--bare", type=Path, help="(internal) run the bare loop on this folder")
    parser.add_argument("--out", type=Path, help="(internal) where the bare loop writes rates")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the project's runs")
    args = parser.parse_args(argv)
    args.overrides = [m for m in args.model if "=" in m] + args.overrides
    args.model = [m for m in args.model if "=" not in m]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.bare:
        bare_folder_loop(args.bare, args.model[0], args.epochs, args.batch_size, args.out)
        return
    print(folder_table(args.model, args), flush=True)


if __name__ == "__main__":
    main()
