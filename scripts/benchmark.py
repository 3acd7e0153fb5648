"""How much does this project's training loop cost over a bare PyTorch loop, and each option?

    python scripts/benchmark.py                      # resnet18 and test_resnet on digits
    python scripts/benchmark.py --model test_resnet --steps 60 --repeats 7
    python scripts/benchmark.py --model resnet18 --batch-size 32 optimizer=sgd   # Hydra overrides
    python scripts/benchmark.py --variants project bf16 chlast ema compile accum2 clip frozen cached
    python scripts/benchmark.py --variants project unfused      # the fused optimizer update's gain
    python scripts/benchmark.py --model vit_tiny_patch16_224 --variants project frozen lora
    python scripts/benchmark.py --folder --model test_resnet --runs 3   # whole runs on PNG files

Each variant trains the same model on the same data for the same number of steps, with the
optimizer and scheduler built as a run builds them from the real YAML
defaults. "bare" is a hand-written loop; "project" is engine/loop.py `train_one_epoch` with its
loggers on (CSV and TensorBoard, into a temporary directory). After a warm-up, the variants run
in alternating order (ABBA...) so that drift from other processes on the machine cancels, and
the table shows the median images/s of each and its ratio to the first variant.

Torch runs one thread by default here, because the ratio is the point and machines are shared:
on 2 busy cores, 2 intra-op threads ran 3-8x slower and varied 10x between runs, so ratios were
noise (0.79 to 1.27); one thread varied 5%. `--threads 0` keeps torch's own choice.

Each option row is "project" with one option on (bf16 autocast, channels_last, EMA,
torch.compile, accumulation over 2 batches, gradient clipping, a frozen backbone, cached
features, LoRA adapters): list "project" first and the ratio column is the option's on/off
speed. A last column gives each variant's peak memory over one timed run: CUDA's allocator peak
on a GPU; on the CPU, the variant's tensors that stay (weights, gradients, optimizer state) plus
the rise of the process's peak resident memory during the steps (activations).
A new row is one more `Variant` in ALL_VARIANTS: a name, a loop function, and the Hydra
overrides its setup needs. After the table, scripts/time_to_first_step.py times start-up.

`--folder` (the rest of the arguments go to scripts/folder_benchmark.py) times what users wait
for instead: whole `train.py` runs on digits written as PNG class folders against a bare
hand-written folder loop, with training and whole-epoch images/s, process seconds, time to the
first step and page faults.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # imported, not run, this is not set
import folder_benchmark  # noqa: E402
from benchmark_loops import (  # noqa: E402
    Setup,
    Variant,
    bare_loop,
    build_setup,
    compose_config,
    project_loop,
)
from peak_memory import peak_memory_mib, synchronize  # noqa: E402
from time_to_first_step import startup_table  # noqa: E402

FROZEN = ("freeze=backbone", "freeze.allow_random_backbone=true")  # speed needs no weights
ALL_VARIANTS = {
    variant.name: variant
    for variant in [
        Variant("bare", bare_loop),
        Variant("project", project_loop),
        Variant("frozen", project_loop, FROZEN),
        Variant("lora", project_loop, ("freeze=lora", "freeze.allow_random_backbone=true")),
        # Epochs after the first: the features were computed once, while building the setup.
        Variant(
            "cached",
            project_loop,
            (
                *FROZEN,
                "freeze.cache_features=true",
                "data.augment=false",
                "freeze.feature_cache_dir=null",
            ),
        ),
        Variant("bf16", project_loop, ("trainer.precision=bf16",)),
        Variant("chlast", project_loop, ("trainer.channels_last=true",)),
        Variant("ema", project_loop, ("trainer.ema_decay=0.999",)),
        # Compiled during the warm-up: only steps after compilation are timed.
        Variant("compile", project_loop, ("trainer.compile=true",)),
        Variant("accum2", project_loop, ("trainer.accumulate_grad_batches=2",)),
        Variant("clip", project_loop, ("trainer.grad_clip=1.0",)),
        # torch's default update (a loop over the tensors on CPU) instead of the YAML's fused one.
        Variant("unfused", project_loop, ("optimizer.fused=false",)),
    ]
}
VARIANTS = [ALL_VARIANTS["bare"], ALL_VARIANTS["project"]]


def images_in(loader: DataLoader, steps: int) -> int:
    """Images in the first `steps` batches, passes over the loader repeating as needed."""
    per_epoch = min(len(loader) * loader.batch_size, len(loader.dataset))
    epochs, rest = divmod(steps, len(loader))
    return epochs * per_epoch + min(rest * loader.batch_size, per_epoch)


def images_per_s(variant: Variant, setup: Setup, steps: int) -> float:
    """Wall-clock throughput of `steps` steps, the loader's iteration included."""
    synchronize(setup.stepper.device)
    start = time.perf_counter()
    variant.loop(setup, steps)
    synchronize(setup.stepper.device)
    return images_in(setup.loader, steps) / (time.perf_counter() - start)


def measure(
    model: str,
    steps: int,
    batch_size: int,
    image_size: int,
    repeats: int,
    warmup_steps: int,
    overrides: Sequence[str] = (),
    variants: Sequence[Variant] = VARIANTS,
    peaks: dict[str, float] | None = None,
) -> dict[str, list[float]]:
    """images/s of every variant over `repeats` alternating runs, after a warm-up of each.

    With `peaks` (a dict to fill), also each variant's peak memory in MiB (peak_memory_mib).
    """
    with tempfile.TemporaryDirectory(prefix="benchmark-") as tmp:
        setups = {}
        for variant in variants:
            cfg = compose_config(model, batch_size, image_size, [*overrides, *variant.overrides])
            log_dir = Path(tmp) / variant.name
            log_dir.mkdir()
            setups[variant.name] = build_setup(cfg, log_dir)
        for variant in variants:
            variant.loop(setups[variant.name], warmup_steps)
        rates: dict[str, list[float]] = {variant.name: [] for variant in variants}
        for repeat in range(repeats):
            order = variants if repeat % 2 == 0 else list(reversed(variants))
            for variant in order:
                rates[variant.name].append(images_per_s(variant, setups[variant.name], steps))
        if peaks is not None:
            for variant in variants:
                peaks[variant.name] = peak_memory_mib(variant, setups[variant.name], steps)
        for setup in setups.values():
            setup.loggers.finish("completed")
    return rates


def ratios(rates: dict[str, list[float]]) -> dict[str, float]:
    """Each variant's speed relative to the first, the median over repeats.

    Runs of one repeat are back to back, so their ratio cancels slow drift in the machine's
    load better than a ratio of medians would.
    """
    baseline = next(iter(rates.values()))
    return {
        name: statistics.median(v / b for v, b in zip(values, baseline, strict=True))
        for name, values in rates.items()
    }


HEADER = f"{'model':<22}{'variant':<10}{'images/s':>10}{'min..max':>16}{'ratio':>8}{'peak MiB':>10}"


def table_rows(
    model: str, rates: dict[str, list[float]], peaks: dict[str, float] | None = None
) -> str:
    """A model's rows under HEADER: median images/s, spread, ratio to the first, peak memory."""
    lines = []
    for name, ratio in ratios(rates).items():
        values = rates[name]
        spread = f"{min(values):.0f}..{max(values):.0f}"
        median = statistics.median(values)
        peak = (peaks or {}).get(name, float("nan"))
        memory = "-" if peak != peak else f"{peak:.0f}"  # NaN: not measured
        lines.append(f"{model:<22}{name:<10}{median:>10.1f}{spread:>16}{ratio:>8.3f}{memory:>10}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="+", default=["resnet18", "test_resnet"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each variant")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--logger", default="[csv,tensorboard]", help="the logger group")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["bare", "project"],
        choices=sorted(ALL_VARIANTS),
        help="rows; ratios are to the first",
    )
    parser.add_argument(
        "--startup-runs",
        type=int,
        default=3,
        help="runs of train.py timed to the first optimizer step (0: none)",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. optimizer=sgd")
    args = parser.parse_args(argv)
    # `--model resnet18 optimizer=sgd`: the override lands in --model's list; move it.
    args.overrides = [m for m in args.model if "=" in m] + args.overrides
    args.model = [m for m in args.model if "=" not in m]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--folder" in argv:
        argv.remove("--folder")
        folder_benchmark.main(argv)
        return
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{args.steps} steps x {args.repeats} repeats, batch {args.batch_size}, "
        f"{args.image_size}px, {torch.get_num_threads()} threads, logger={args.logger}, "
        f"overrides {args.overrides}"
    )
    print(HEADER)
    for model in args.model:
        peaks: dict[str, float] = {}
        rates = measure(
            model,
            args.steps,
            args.batch_size,
            args.image_size,
            args.repeats,
            args.warmup_steps,
            [f"logger={args.logger}", *args.overrides],
            [ALL_VARIANTS[name] for name in args.variants],
            peaks,
        )
        print(table_rows(model, rates, peaks), flush=True)
    if args.startup_runs:
        print()
        print(startup_table(args.model, args.overrides, args.startup_runs, args.threads))


if __name__ == "__main__":
    main()
