"""keep_freed_memory: a step-sized block comes from malloc's heap, not a fresh mapping.

A fresh mapping is what costs: it is unmapped on free, and the next step faults every page of it
back in. Fault counts themselves vary with the kernel (transparent huge pages) and with load (a
CI run once saw more faults with the setting on), so the test checks the mechanism, which is
deterministic: glibc's count of mmapped blocks (mallinfo2().hblks) while a block lives.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from finetune.engine.memory import keep_freed_memory

NEW_MAPPINGS_FOR_A_BLOCK = """
import ctypes, sys, torch
from finetune.engine.memory import keep_freed_memory
keep_freed_memory(sys.argv[1] == "on")
fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in fields.split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblks
block = torch.empty(int(sys.argv[2]) * 2**18)  # MiB of float32
print(libc.mallinfo2().hblks - before)
"""


def new_mappings(setting: str, mib: int) -> int:
    result = subprocess.run(
        [sys.executable, "-c", NEW_MAPPINGS_FOR_A_BLOCK, setting, str(mib)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize(
    "mib",
    [
        24,  # a step's activations at a modest size
        72,  # resnet18's largest block at batch 64: above the 32 MiB mapping threshold's ceiling
    ],
)
def test_a_step_sized_block_comes_from_the_heap_with_freed_memory_kept(mib: int) -> None:
    assert new_mappings("off", mib) == 1  # glibc's default: mmapped, and unmapped again on free
    assert new_mappings("on", mib) == 0


def test_off_changes_nothing() -> None:
    assert keep_freed_memory(False) is False
