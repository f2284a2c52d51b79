"""Output folders: one writer at a time, checked before any work, names the file system accepts.

A grid's results folder and a run's folder are each written by one process:
:func:`exclusive` holds an ``flock`` on ``FOLDER/.lock`` for as long as the
writer runs, and the kernel releases it when the process ends, however it
ends, so a killed writer never leaves a stale lock. :func:`writable` tries a
real write (mode bits alone do not tell: root ignores them) so that a folder
that cannot take results fails before the work that would fill it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from llmrl.errors import UsageError

#: Longest file-name stem llmrl makes from user input, in bytes; file systems allow 255 bytes per name, and
#: a record's temporary file (``.NAME.json.PID.tmp``) adds up to 20.
MAX_NAME = 200


def short_name(name: str, limit: int = MAX_NAME) -> str:
    """``name`` if it fits in ``limit`` bytes, else a readable prefix and a hash of the whole name.

    Deterministic, so a grid's ``--dry-run``, its runs and a resumed grid agree on every run's file.
    """
    raw = name.encode()
    if len(raw) <= limit:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    prefix = raw[:limit - len(digest) - 1].decode(errors="ignore")
    return f"{prefix}~{digest}"


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``path`` whole or not at all (temporary file, fsync, rename); a failed write leaves no trace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def writable(folder: Path, what: str) -> None:
    """Create ``folder`` and write and delete a file in it; one clear error if that cannot be done."""
    probe = folder / f".probe.{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to {what} {folder}: {exc.strerror}") from None


@contextmanager
def exclusive(folder: Path, writer: str) -> Iterator[None]:
    """Hold ``folder/.lock`` while the body runs; a second ``writer`` on the same folder is refused with the
    holder's PID instead of writing beside the first."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UsageError(f"cannot use {folder} as a folder to write to: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise UsageError(f"{folder} is in use by another {writer} (PID {holder}); wait for it to end "
                             "or choose another out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


@contextmanager
def one_builder(folder: Path) -> Iterator[None]:
    """Wait for ``folder/.build.lock``, then hold it while the body runs: of the processes that find a cache
    entry missing at once, one builds it and the others, once it is done, read it instead of building it
    again (the body checks again what is missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".build.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
