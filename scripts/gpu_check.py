"""Issue 18, item 6 on one CUDA GPU: the project's whole loop against a synthetic-data ceiling.

    python scripts/gpu_check.py                     # resnet50, bf16, channels_last, batch 128
    python scripts/gpu_check.py --batch-size 256 --steps 40

Four checks, each printed as it finishes, in an estimated 5-7 minutes on an H100 (under 8):

1. ceiling: timm's benchmark.py training method, written out (timm ships benchmark.py in its
   repository, not in the package): resnet50 from timm, synthetic inputs already on the GPU,
   channels_last, bf16 autocast, SGD, CUDA-synchronised timing of `--steps` steps after a
   warm-up. Images/s is the most any loop on real data can reach on this card.
2. project: scripts/benchmark.py's "project" variant (engine/loop.py `train_one_epoch` with
   CSV and TensorBoard loggers, fed by the project's DataLoader from digits upscaled to 224 px)
   with trainer.precision=bf16 trainer.channels_last=true; ratio to the ceiling, goal >= 0.9.
3. host syncs: the project's loop again under torch.cuda.set_sync_debug_mode("warn"), counting
   the synchronising calls; the loop reads the loss only every trainer.log_every_n_steps, so the
   goal is at most one sync per logged step and none on the others.
4. whole epochs (item 2): `train.py` on scripts/folder_benchmark.py's digits PNG folder, each
   training image linked `--copies` times so that an epoch is long enough to time, at
   `--image-size`, with the same precision and layout; images/s over whole epochs (validation,
   checkpoint, records) against the training images/s, goal >= 0.92, with
   `checkpoint.background=auto` (a thread writes the checkpoint on a GPU) and, for comparison,
   `false` (the epoch waits for its save).

Exit status 0 when the goals are met, 1 when one is not, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402
import folder_benchmark  # noqa: E402

GPU_OVERRIDES = ("trainer.precision=bf16", "trainer.channels_last=true", "logger=[csv,tensorboard]")


def ceiling(model_name: str, batch_size: int, image_size: int, steps: int) -> float:
    """Images/s of timm's benchmark.py training loop: synthetic data, nothing but the steps."""
    import timm

    model = (
        timm.create_model(model_name, num_classes=1000).cuda().to(memory_format=torch.channels_last)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    images = torch.randn(batch_size, 3, image_size, image_size, device="cuda")
    images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 1000, (batch_size,), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = criterion(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - start)


def project_rate(args: argparse.Namespace, overrides: list[str]) -> float:
    rates = benchmark.measure(
        args.model,
        args.steps,
        args.batch_size,
        args.image_size,
        args.repeats,
        warmup_steps=5,
        overrides=overrides,
        variants=[benchmark.ALL_VARIANTS["project"]],
    )
    return sorted(rates["project"])[len(rates["project"]) // 2]


def host_syncs(args: argparse.Namespace, overrides: list[str]) -> tuple[int, int, int]:
    """(synchronising calls, steps, logged steps) of the project's loop in sync-debug mode."""
    import tempfile

    cfg = benchmark.compose_config(args.model, args.batch_size, args.image_size, overrides)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        setup = benchmark.build_setup(cfg, Path(tmp))
        benchmark.project_loop(setup, 5)  # warm-up: cuDNN autotuning, allocator
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                benchmark.project_loop(setup, args.steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        setup.loggers.finish("completed")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    for warning in syncs[:5]:
        print(f"  sync: {warning.filename}:{warning.lineno}: {str(warning.message)[:120]}")
    return len(syncs), args.steps, args.steps // cfg.trainer.log_every_n_steps + 1


def folder_of_copies(root: Path, copies: int) -> Path:
    """The digits PNG folder with each training image hard-linked `copies` times in all: the
    same decode work per image, epochs long enough for a GPU, no extra disk."""
    folder_benchmark.write_digits_folder(root)
    for path in sorted((root / "train").rglob("*.png")):
        for copy in range(1, copies):
            os.link(path, path.with_name(f"{path.stem}-{copy}{path.suffix}"))
    return root


def whole_epochs(
    args: argparse.Namespace, root: Path, tmp: Path, overrides: list[str]
) -> tuple[float, float]:
    """(training images/s, images/s over whole epochs) of one `train.py` run on the folder:
    the later epochs of each, as folder_benchmark.py measures them."""
    run = argparse.Namespace(
        threads=len(os.sched_getaffinity(0)),
        epochs=args.epochs,
        batch_size=args.batch_size,
        overrides=[f"data.image_size={args.image_size}", *overrides],
    )
    rows = folder_benchmark.one_run("project", args.model, root, tmp, run)
    return rows["train_img_s"], rows["epoch_img_s"]


def epoch_ratios(args: argparse.Namespace, overrides: list[str]) -> dict[str, float]:
    """Whole-epoch over training images/s for each checkpoint.background setting, printed."""
    ratios = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-folder-") as tmp:
        root = folder_of_copies(Path(tmp) / "digits", args.copies)
        for background in ("auto", "false"):
            setting = [*overrides, f"checkpoint.background={background}"]
            train, whole = whole_epochs(args, root, Path(tmp), setting)
            ratios[background] = whole / train
            print(
                f"whole epochs, checkpoint.background={background}: training {train:.0f} "
                f"images/s, whole epochs {whole:.0f}, {whole / train:.2f} (goal >= 0.92)",
                flush=True,
            )
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8, help="data.num_workers of the loop")
    parser.add_argument("--epochs", type=int, default=3, help="of each whole-epoch run")
    parser.add_argument("--copies", type=int, default=6, help="of each digit in those runs")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing checked")
        return 2
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {vars(args)}", flush=True)
    top = ceiling(args.model, args.batch_size, args.image_size, args.steps)
    print(f"ceiling (timm benchmark method, synthetic): {top:.0f} images/s", flush=True)
    overrides = [*GPU_OVERRIDES, f"data.num_workers={args.workers}", "data.augment=false"]
    rate = project_rate(args, overrides)
    ratio = rate / top
    print(f"project loop: {rate:.0f} images/s, {ratio:.2f} of the ceiling (goal >= 0.90)")
    syncs, steps, logged = host_syncs(args, overrides)
    print(f"host syncs: {syncs} in {steps} steps, {logged} of them logged (goal <= {logged})")
    epochs = epoch_ratios(args, overrides)
    return 0 if ratio >= 0.9 and syncs <= logged and epochs["auto"] >= 0.92 else 1


if __name__ == "__main__":
    raise SystemExit(main())
