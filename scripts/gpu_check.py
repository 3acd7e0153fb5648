"""Issue 18, item 6 on one CUDA GPU: the project's whole loop against a synthetic-data ceiling.

    python scripts/gpu_check.py                     # resnet50, bf16, channels_last, batch 128
    python scripts/gpu_check.py --batch-size 256 --steps 40

Three checks, each printed as it finishes, in about 3-5 minutes on an H100 (under 8):

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

Exit status 0 when both goals are met, 1 when one is not, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8, help="data.num_workers of the loop")
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
    return 0 if ratio >= 0.9 and syncs <= logged else 1


if __name__ == "__main__":
    raise SystemExit(main())
