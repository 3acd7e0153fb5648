"""Start-up timing (the process's age, phases that add up, one record at the first step), and
a quick exit."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import torch
from conftest import REPO_ROOT

from finetune.engine.startup import StartupClock, process_age_s


def test_process_age_counts_from_before_this_test_ran() -> None:
    first = process_age_s()
    time.sleep(0.05)
    second = process_age_s()
    assert first > 0.1  # pytest and torch were imported before: seconds, not zero
    assert second - first >= 0.04  # the sleep, at the clock's resolution; no upper bound:
    # a loaded machine may pause this process for any time


def test_the_first_optimizer_step_closes_the_clock_once(caplog) -> None:
    clock = StartupClock("imports")
    clock.mark("model")
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    summary: dict = {}
    clock.stop_at_first_step(optimizer, summary)
    assert "startup_s" not in summary  # nothing until a step

    with caplog.at_level(logging.INFO):
        for _ in range(3):
            weight.sum().backward()
            optimizer.step()
    phases = summary["startup_s"]
    assert list(phases) == ["imports", "model", "first_step", "total"]
    assert abs(sum(v for k, v in phases.items() if k != "total") - phases["total"]) < 0.03
    assert caplog.text.count("first optimizer step") == 1
    assert not optimizer._optimizer_step_post_hooks  # the hook removed itself


def test_live_objects_are_frozen_at_exit_so_teardown_does_not_scan_them() -> None:
    """The exit hook that runs after the freeze (registered before it) sees frozen objects,
    and the entrypoints register the freeze."""
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count()))\n"
        "from finetune.process_exit import leave_live_objects_to_the_os\n"
        "leave_live_objects_to_the_os()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) > 1000, result.stdout
    for entrypoint in ("train.py", "eval.py", "predict.py"):
        assert "leave_live_objects_to_the_os()" in (REPO_ROOT / entrypoint).read_text()
