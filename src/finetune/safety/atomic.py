"""Writing a file so that a crash at any instant leaves the old file or the new one, whole.

Every record and checkpoint of a run goes through `atomic_write`: a temporary file in the same
directory, fsynced, renamed over the old one, and the directory fsynced so the rename survives a
power cut. No torch here: the sweep callback and the run-directory records use it too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from finetune.safety.errors import WriteFailed


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call `write(file_object)` on a temporary file, fsync it, then rename it to `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp makes 0600 files; records and checkpoints get the usual mode (0666 - umask),
        # so colleagues on a shared cluster can read them.
        os.fchmod(fd, 0o666 & ~current_umask())
    except OSError as error:
        raise write_failed(path, error) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        # torch.save wraps a failed write (disk full) in a RuntimeError of its zip writer.
        cause = first_os_error(error)
        if cause is not None:
            raise write_failed(path, cause) from None
        raise
    fsync_directory(path.parent)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def link_atomic(source: Path, target: Path) -> None:
    """Make `target` the same file as `source` (a hard link, or a copy where links fail)."""
    tmp = target.with_name(f".{target.name}.link.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here (some network and FUSE file systems): a streamed copy
        atomic_write(target, lambda handle: copy_into(source, handle))
        return
    try:
        os.replace(tmp, target)
    except OSError as error:
        raise write_failed(target, error) from None
    fsync_directory(target.parent)


def copy_into(source: Path, handle: IO[bytes]) -> None:
    """Stream `source` into an open file in chunks: a large checkpoint never sits in memory."""
    with source.open("rb") as reader:
        shutil.copyfileobj(reader, handle)


def first_os_error(error: BaseException) -> OSError | None:
    """The OSError in `error`'s chain of causes, if any."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        if isinstance(error, OSError):
            return error
        seen.append(error)
        error = error.__cause__ or error.__context__
    return None


def write_failed(path: Path, error: OSError) -> WriteFailed:
    """The one line for a write that failed (disk full, file too large, no permission)."""
    return WriteFailed(
        f"could not write {path}: {error.strerror or error}; the previous file is untouched "
        "(free disk space or fix permissions)"
    )


def current_umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
