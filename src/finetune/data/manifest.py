"""The split manifest (a run's split.json): which samples each split holds, and the classes.

A result is only as good as the data behind it. A run writes, once at its start, what each of
its splits holds (image files relative to data.root, or sample indices for the built-in data
sets), their labels, the class names in order, and a SHA-256 of each; its checkpoints carry the
manifest's hash. A resume (and eval.py on the run's own data) then runs on exactly that data:

- the class names must be the same, in the same order (a swap would silently relabel);
- every file of every split must still be there, under the same class;
- image files added since are left out of every split (named in a warning): a split held
  out of one folder by fraction is not reshuffled, and no new file can reach training from
  another split; start a new run to use them;
- the built-in data sets (digits, CIFAR-10) are rebuilt from their seed: the rebuilt indices
  must hash the same.

Anything else is refused with one line that says what changed and how to go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from finetune.data.splits import Splits
from finetune.safety.errors import FinetuneError

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
# How many files a message names (the count is always whole).
NAMED_FILES = 3


class DataChanged(FinetuneError):
    """The data under a run's config is not the data the run was trained on."""


def digest(content: Any) -> str:
    """SHA-256 of `content` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def split_manifest(splits: Splits) -> dict[str, Any]:
    """What `splits` hold, with a hash per split and one over the classes and all splits."""
    entries = {name: split_entry(splits, name) for name in SPLIT_NAMES}
    return {
        "format_version": MANIFEST_VERSION,
        "sha256": manifest_digest(splits.class_names, entries),
        "classes": list(splits.class_names),
        "test_source": splits.test_source,
        "splits": entries,
    }


def manifest_digest(class_names: list[str], entries: dict[str, dict[str, Any]]) -> str:
    return digest({"classes": class_names, **{k: v["sha256"] for k, v in entries.items()}})


def split_entry(splits: Splits, name: str) -> dict[str, Any]:
    """{"size", "sha256", "files" or "indices", "labels"} of one split."""
    dataset = getattr(splits, name)
    content = {
        **members_of(dataset, (splits.indices or {}).get(name)),
        "labels": labels_of(dataset),
    }
    return {"size": len(dataset), "sha256": digest(content), **content}


def members_of(dataset: Dataset, indices: list[int] | None) -> dict[str, list]:
    """Files relative to the data set's root with their sizes (image folders), else indices.

    A file's size is one stat, no read: it tells a replaced or swapped image from the one
    the run saw in most cases, without hashing every byte of the data set.
    """
    root = getattr(dataset, "root", None)
    if root is not None:
        paths = [path for path, _ in dataset.samples]
        return {
            "files": [relative(path, root) for path in paths],
            "bytes": [os.stat(path).st_size for path in paths],
        }
    return {"indices": [int(i) for i in indices]} if indices is not None else {}


def relative(path: str, root: Path) -> str:
    """`path` relative to `root`, with forward slashes (a table may name files above it)."""
    return Path(os.path.relpath(path, root)).as_posix()


def labels_of(dataset: Dataset) -> list[Any]:
    """Every sample's label (a class index, or a multi-label 0/1 row), without decoding images."""
    if hasattr(dataset, "labels"):
        return [plain(label) for label in dataset.labels]
    if hasattr(dataset, "samples"):
        return [plain(label) for _, label in dataset.samples]
    return []


def plain(label: Any) -> Any:
    """A label as JSON holds it: an int, or a list of numbers for a tensor row."""
    return label.tolist() if hasattr(label, "ndim") and label.ndim > 0 else int(label)


def checked_manifest(saved: dict[str, Any] | None, expected: str, path: Path) -> dict[str, Any]:
    """The split.json read from `path`, whole and the one whose hash a checkpoint carries."""
    if saved is None:
        raise DataChanged(
            f"{path} is missing: it records which files each split of the run holds, and the "
            "checkpoint expects it; restore it from a copy of the run, or start a new run"
        )
    if not is_intact(saved):
        raise DataChanged(f"{path} is damaged or was edited; restore it, or start a new run")
    if saved["sha256"] != expected:
        raise DataChanged(
            f"{path} is not the split of this checkpoint (hash {saved['sha256'][:12]}, the "
            f"checkpoint's {expected[:12]}): it belongs to another run; restore this run's"
        )
    return saved


def is_intact(saved: Any) -> bool:
    """Whether every hash in a split.json matches what it lists (it is data: trust nothing)."""
    try:
        entries = saved["splits"]
        return (
            set(entries) == set(SPLIT_NAMES)
            and all(entry["sha256"] == digest(hashed_part(entry)) for entry in entries.values())
            and manifest_digest(saved["classes"], entries) == saved["sha256"]
        )
    except (KeyError, TypeError, AttributeError):
        return False


def hashed_part(entry: dict[str, Any]) -> dict[str, Any]:
    """What a split entry's hash is taken over: its members and labels."""
    return {k: v for k, v in entry.items() if k not in ("size", "sha256")}


def check_classes(saved: list[str], found: list[str], fix: str) -> None:
    """Refuse class names that differ from the run's, or the same names in another order."""
    if list(saved) == list(found):
        return
    how = "the same names in another order" if sorted(saved) == sorted(found) else "other names"
    raise DataChanged(
        f"the data's classes {list(found)} are not the run's {list(saved)} ({how}: the labels "
        f"would mean other classes); {fix}"
    )


def follow_manifest(splits: Splits, saved: dict[str, Any]) -> Splits:
    """`splits` as the run saved them (files added since left out), or a clear refusal."""
    check_classes(
        saved["classes"],
        splits.class_names,
        "restore data.root (or data.classes) as the run had it, or start a new run",
    )
    if all("files" in saved["splits"][name] for name in SPLIT_NAMES):
        splits = saved_files(splits, saved)
    rebuilt = split_manifest(splits)
    for name in SPLIT_NAMES:
        if rebuilt["splits"][name]["sha256"] != saved["splits"][name]["sha256"]:
            raise DataChanged(
                f"the {name} split rebuilt from the config is not the run's (its samples or "
                "labels differ from split.json): the data set or the library that splits it "
                "changed; restore them, or start a new run"
            )
    return splits


def saved_files(splits: Splits, saved: dict[str, Any]) -> Splits:
    """New image-file data sets holding exactly the files split.json lists."""
    template = splits.train
    root = template.root
    # Only files listed under data.root today are used (split.json is data: its names choose
    # no file), with the labels of their class folders; the hashes then check split.json's.
    listed = {
        relative(path, root): (path, label)
        for dataset in (splits.train, splits.val, splits.test)
        for path, label in dataset.samples
    }
    for name in SPLIT_NAMES:
        entry = saved["splits"][name]
        gone = [file for file in entry["files"] if file not in listed]
        if gone:
            raise DataChanged(
                f"{len(gone)} file(s) of the run's {name} split are gone from {root} "
                f"(e.g. {', '.join(gone[:NAMED_FILES])}) or moved to another class or split; "
                "restore them, or start a new run on the data as it is now"
            )
        changed = [
            file
            for file, size in zip(entry["files"], entry["bytes"], strict=True)
            if os.stat(listed[file][0]).st_size != size
        ]
        if changed:
            raise DataChanged(
                f"{len(changed)} file(s) of the run's {name} split under {root} changed since "
                f"the run started (other size: {', '.join(changed[:NAMED_FILES])}); restore "
                "them, or start a new run on the data as it is now"
            )
    kept = {file for name in SPLIT_NAMES for file in saved["splits"][name]["files"]}
    added = sorted(set(listed) - kept)
    if added:
        log.warning(
            "%d image file(s) added under %s since the run started are left out of every split "
            "(e.g. %s): the run goes on with the data it started with; a new run will use them",
            len(added),
            root,
            ", ".join(added[:NAMED_FILES]),
        )

    def files_of(name: str) -> Dataset:
        return template.with_samples([listed[file] for file in saved["splits"][name]["files"]])

    return Splits(
        files_of("train"),
        files_of("val"),
        files_of("test"),
        splits.class_names,
        splits.kind,
        saved["test_source"],
        splits.indices,
    )
