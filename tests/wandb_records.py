"""Read an offline W&B run back: the records of its run-<id>.wandb file, for tests.

The file is W&B's transaction log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then
LevelDB-style 32 KiB blocks of chunks (crc32 u32, length u16, type u8: 1 full, 2 first,
3 middle, 4 last), each record a protobuf `Record`. wandb 0.31 no longer ships a Python
reader, so this is one, small and strict.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7


@dataclass
class WandbRun:
    run_id: str
    group: str
    name: str
    tags: list[str]
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    path: Path = Path()


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B log"
    found, chunks, offset = [], b"", HEADER
    while offset + HEADER <= len(data):
        if BLOCK - offset % BLOCK < HEADER:  # block trailer padding
            offset += BLOCK - offset % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        if kind == 0 and length == 0:
            break
        chunks += data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            found.append(record)
            chunks = b""
    return found


def item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(run_dir: Path) -> WandbRun:
    """The one W&B run under <run_dir>/wandb/: run facts, config, history rows, summary."""
    files = sorted((run_dir / "wandb").glob("*run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one W&B run in {run_dir}/wandb, found {files}"
    run: WandbRun | None = None
    for record in records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
            run = WandbRun(
                run_id=record.run.run_id,
                group=record.run.run_group,
                name=record.run.display_name,
                tags=list(record.run.tags),
                config=config,
                path=files[0],
            )
        elif kind == "history" and run is not None:
            run.history.append({item_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary" and run is not None:
            for item in record.summary.update:
                run.summary[item_key(item)] = json.loads(item.value_json)
    assert run is not None, f"no run record in {files[0]}"
    return run
