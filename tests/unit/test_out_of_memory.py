"""Running out of memory, recognised in PyTorch's words and oneDNN's, as one line with the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from finetune.safety.errors import OutOfMemory
from finetune.safety.faults import explain, status_of

CFG = OmegaConf.create({"data": {"batch_size": 48, "image_size": 224}})


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough "
                "memory: you tried to allocate 4194304 bytes."
            ),
            ["out of CPU memory", "4.0 MiB"],
        ),
        (
            torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0"),
            ["out of GPU memory", "2.00 GiB"],
        ),
        (MemoryError(), ["out of CPU memory"]),
    ],
)
def test_out_of_memory_names_the_batch_size_and_the_fixes(error, words) -> None:
    fault = explain(error, CFG)
    assert isinstance(fault, OutOfMemory) and status_of(fault) == "out_of_memory"
    text = str(fault)
    for word in [*words, "data.batch_size=48", "trainer.accumulate_grad_batches", "bf16"]:
        assert word in text


ONEDNN_UNDER_A_CAP = """
import resource, sys
from omegaconf import OmegaConf
from finetune.safety.faults import explain
cfg = OmegaConf.create({"data": {"batch_size": 48, "image_size": 224}})
error = RuntimeError("could not create a primitive")
print(type(explain(error, cfg)).__name__, flush=True)
if sys.argv[1] == "capped":
    in_use = next(x for x in open("/proc/self/status") if x.startswith("VmSize")).split()[1]
    cap = int(in_use) * 1024 + 8 * 2**20  # what the process maps now, and 8 MiB
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.RLIM_INFINITY))
    print(type(explain(error, cfg)).__name__, flush=True)
"""


@pytest.mark.parametrize("limit", ["free", "capped"])
def test_onednn_failing_to_create_a_kernel_is_out_of_memory_only_when_memory_is_out(limit):
    """oneDNN's "could not create a primitive" is the failed allocation under a capped address
    space (how CI met it) and a real oneDNN fault elsewhere, which must keep its own words."""
    result = subprocess.run(
        [sys.executable, "-c", ONEDNN_UNDER_A_CAP, limit], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    verdicts = result.stdout.split()
    assert verdicts[0] == "RuntimeError"  # plenty of memory: left alone
    assert verdicts[1:] == (["OutOfMemory"] if limit == "capped" else [])
