"""unique_dir: two runs never share a run directory, in one process or in two started together."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from finetune import resolvers


def test_same_base_twice_in_one_process_is_the_same_dir(tmp_path: Path, monkeypatch) -> None:
    # Hydra resolves the run directory several times per job: each answer must agree.
    monkeypatch.setattr(resolvers, "_reserved_dirs", {})
    base = str(tmp_path / "2026-01-01" / "12-00-00")
    first = resolvers.unique_dir(base)
    assert first == base and Path(first).is_dir()
    assert resolvers.unique_dir(base) == first


def test_taken_base_gets_a_suffix(tmp_path: Path, monkeypatch) -> None:
    base = tmp_path / "12-00-00"
    base.mkdir()
    (tmp_path / "12-00-00_1").mkdir()
    (base / "earlier.txt").write_text("an earlier run")
    monkeypatch.setattr(resolvers, "_reserved_dirs", {})
    chosen = resolvers.unique_dir(str(base))
    assert chosen == f"{base}_2" and Path(chosen).is_dir()
    assert sorted(p.name for p in base.iterdir()) == ["earlier.txt"]


CHILD = """
import sys, time
from pathlib import Path
from finetune.resolvers import unique_dir
go = Path(sys.argv[1])
Path(sys.argv[3]).touch()  # ready: imports done, about to wait
while not go.exists():
    time.sleep(0.001)
print(unique_dir(sys.argv[2]))
"""


def test_two_processes_started_together_get_distinct_dirs(tmp_path: Path) -> None:
    go, base = tmp_path / "go", str(tmp_path / "runs" / "12-00-00")
    ready = [tmp_path / f"ready{i}" for i in range(4)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(go), base, str(marker)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for marker in ready
    ]
    while not all(marker.exists() for marker in ready):  # every child at its wait loop
        assert all(child.poll() is None for child in children), "a child died while starting"
        time.sleep(0.01)
    go.touch()  # then release them at once
    outputs = [child.communicate(timeout=60)[0].strip() for child in children]
    assert all(child.returncode == 0 for child in children)
    assert len(set(outputs)) == 4, outputs
    assert set(outputs) == {base, f"{base}_1", f"{base}_2", f"{base}_3"}
    assert all(Path(out).is_dir() for out in outputs)
