"""scripts/benchmark.py runs end to end on a tiny model (speed is never asserted: noisy here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"


def load_script() -> ModuleType:
    """Import the script as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_measure_gives_positive_rates_and_a_ratio() -> None:
    benchmark = load_script()
    rates = benchmark.measure(
        "test_resnet",
        steps=2,
        batch_size=16,
        image_size=32,
        repeats=2,
        warmup_steps=1,
        overrides=["logger=[csv,tensorboard]"],
    )
    assert set(rates) == {"bare", "project"}
    assert all(len(values) == 2 and min(values) > 0 for values in rates.values())
    ratios = benchmark.ratios(rates)
    assert ratios["bare"] == 1.0 and ratios["project"] > 0
    rows = benchmark.table_rows("test_resnet", rates).splitlines()
    assert [row.split()[1] for row in rows] == ["bare", "project"]


def test_main_prints_the_table(capsys) -> None:  # noqa: ANN001 (pytest fixture)
    benchmark = load_script()
    # --threads 0: leave torch's thread count alone for the tests that follow in this process.
    args = "--model test_resnet --steps 2 --repeats 1 --warmup-steps 1 --batch-size 16 --threads 0"
    benchmark.main([*args.split(), "--startup-runs", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[-2:]] == ["bare", "project"]


def test_each_option_row_trains_with_its_option_on() -> None:
    """Every option row (but compile, slow to build here) runs and gets a ratio to "project"."""
    benchmark = load_script()
    names = ["project", "bf16", "chlast", "ema", "accum2", "clip", "frozen"]
    rates = benchmark.measure(
        "test_resnet",
        steps=2,
        batch_size=16,
        image_size=32,
        repeats=1,
        warmup_steps=2,  # a step of accum2 is 2 batches
        overrides=["logger=csv"],
        variants=[benchmark.ALL_VARIANTS[name] for name in names],
    )
    assert list(benchmark.ratios(rates)) == names
    assert all(values[0] > 0 for values in rates.values())
    overrides = benchmark.ALL_VARIANTS["accum2"].overrides
    accum2 = benchmark.compose_config("test_resnet", 16, 32, overrides)
    assert accum2.trainer.accumulate_grad_batches == 2


def test_startup_table_times_a_real_run_to_its_first_step() -> None:
    benchmark = load_script()
    table = benchmark.startup_table(["test_resnet"], ["data.image_size=16"], runs=1).splitlines()
    header = ["model", "imports", "splits", "model", "data", "setup", "first_step", "total"]
    assert table[1].split() == header
    name, *seconds = table[2].split()
    phases, total = [float(s) for s in seconds[:-1]], float(seconds[-1])
    assert name == "test_resnet" and min(phases) >= 0 and total > 0
    assert abs(sum(phases) - total) < 0.06  # the phases add up to the whole (rounded to 0.01 s)


def test_lora_row_beside_full_fine_tuning_and_a_frozen_backbone() -> None:
    benchmark = load_script()
    names = ["project", "frozen", "lora"]
    peaks: dict[str, float] = {}
    rates = benchmark.measure(
        "test_vit",
        steps=2,
        batch_size=16,
        image_size=32,
        repeats=1,
        warmup_steps=1,
        overrides=["logger=csv"],
        variants=[benchmark.ALL_VARIANTS[name] for name in names],
        peaks=peaks,
    )
    assert list(benchmark.ratios(rates)) == names and all(v[0] > 0 for v in rates.values())
    assert list(peaks) == names  # off CUDA: the rise of peak resident memory (Linux /proc)
    assert all(peak >= 0 for peak in peaks.values())  # a NaN fails this too
    rows = benchmark.table_rows("test_vit", rates, peaks).splitlines()
    assert [row.split()[1] for row in rows] == names
    assert all(row.split()[-1] != "-" for row in rows)
