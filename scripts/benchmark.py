"""How much does this project's training loop cost over a bare PyTorch loop, and each option?

    python scripts/benchmark.py                      # resnet18 and test_resnet on digits
    python scripts/benchmark.py --model test_resnet --steps 60 --repeats 7
    python scripts/benchmark.py --model resnet18 --batch-size 32 optimizer=sgd   # Hydra overrides
    python scripts/benchmark.py --variants project bf16 chlast ema compile accum2 clip frozen cached
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
import contextlib
import ctypes
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from finetune.engine.build import build_parts
from finetune.engine.distributed import dist_info
from finetune.engine.loop import LoopState, Stepper, train_one_epoch
from finetune.engine.setup import check_config, pick_device, seed_everything
from finetune.records.loggers import Loggers, build_loggers
from finetune.resolvers import register_resolvers
from finetune.safety.signals import StopRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # imported, not run, this is not set
import folder_benchmark  # noqa: E402
from time_to_first_step import startup_table  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass
class Setup:
    """Everything one variant trains with, built from the composed config."""

    cfg: DictConfig
    net: nn.Module  # what the loop trains (the model, or its head on cached features)
    loader: DataLoader
    stepper: Stepper  # optimizer, scheduler, device, precision, EMA
    loggers: Loggers
    loop: LoopState = field(default_factory=LoopState)


@dataclass
class Variant:
    """A row of the table: `loop(setup, steps)` trains `steps` steps."""

    name: str
    loop: Callable[[Setup, int], None]
    overrides: Sequence[str] = field(default_factory=tuple)


def compose_config(
    model: str, batch_size: int, image_size: int, overrides: Sequence[str]
) -> DictConfig:
    """The real YAML defaults, as `python train.py model=MODEL ...` would compose them.

    Pretrained weights do not change the speed, so they are off: no hub lookup, no download.
    """
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"model={model}",
                "model.pretrained=false",
                f"data.batch_size={batch_size}",
                f"data.image_size={image_size}",
                *overrides,
            ],
        )


def build_setup(cfg: DictConfig, log_dir: Path) -> Setup:
    """What a run builds before its first epoch (one process, no DDP):
    the same `build_parts`, so the benchmark times the objects a run trains with."""
    check_config(cfg)
    device = pick_device(cfg.trainer.device)
    seed_everything(cfg.seed)
    parts = build_parts(cfg, device, dist_info())
    loggers = build_loggers(cfg, log_dir, is_main=True)
    return Setup(cfg, parts.net, parts.loaders["train"], parts.stepper, loggers)


def bare_loop(s: Setup, steps: int) -> None:
    """The loop anyone would write by hand: forward, loss, zero_grad, backward, step.

    It uses the setup's model, data, optimizer and scheduler only (fp32, no accumulation,
    clipping or EMA): the baseline that the project's extras are measured against.
    """
    model, device = s.net, s.stepper.device
    optimizer, scheduler = s.stepper.optimizer, s.stepper.scheduler
    model.train()
    criterion = nn.CrossEntropyLoss()
    done = 0
    while done < steps:
        for images, targets in s.loader:
            images, targets = images.to(device), targets.to(device)
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            done += 1
            if done == steps:
                break


def project_loop(s: Setup, steps: int) -> None:
    """This project's `train_one_epoch`, one call per pass over the loader, loggers on."""
    stop = StopRequest()  # the run's signal handlers, as in `train.run`
    try:
        while steps > 0:
            s.cfg.trainer.limit_train_batches = min(steps, len(s.loader))
            train_one_epoch(
                s.net,
                s.loader,
                s.stepper,
                s.loggers,
                s.cfg,
                s.loop,
                stop,
                save_mid_epoch=lambda loss: None,  # checkpoint.every_n_steps is null by default
            )
            steps -= s.cfg.trainer.limit_train_batches
            s.loop.epoch, s.loop.step_in_epoch, s.loop.epoch_loss_sum = s.loop.epoch + 1, 0, 0.0
    finally:
        stop.close()


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


def peak_memory_mib(variant: Variant, setup: Setup, steps: int) -> float:
    """Peak memory of `steps` steps in MiB: CUDA's allocator peak on a GPU. On the CPU (Linux),
    the same quantity pieced together: the variant's tensors that stay (parameters, gradients,
    optimizer state, EMA) plus how far the process's peak resident memory rose during the
    steps (the kernel's high-water mark, reset through /proc: activations and temporaries).
    NaN where neither can be asked."""
    device = setup.stepper.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        variant.loop(setup, steps)
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    except OSError:
        return float("nan")
    trim_heap()
    before = resident_kib("VmRSS")
    variant.loop(setup, steps)
    return (resident_kib("VmHWM") - before) / 1024 + held_tensor_bytes(setup) / 2**20


def held_tensor_bytes(setup: Setup) -> int:
    """Bytes of the tensors a variant keeps between steps: its model's parameters and
    buffers, their gradients, the optimizer's state and the EMA copy."""
    tensors = {id(t): t for t in setup.net.parameters()}
    tensors.update({id(t): t for t in setup.net.buffers()})
    tensors.update({id(p.grad): p.grad for p in setup.net.parameters() if p.grad is not None})
    for state in setup.stepper.optimizer.state.values():
        tensors.update({id(v): v for v in state.values() if isinstance(v, torch.Tensor)})
    if setup.stepper.ema is not None:
        tensors.update({id(t): t for t in setup.stepper.ema.module.state_dict().values()})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def trim_heap() -> None:
    """Give the heap's free memory back to the kernel (glibc), so that what the steps reuse
    from an earlier variant's frees counts as theirs."""
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def resident_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
