"""Atomic writes and file locks: nothing half-written, nothing lost to a race."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vlm.errors import VlmError

# Temp files of atomic writes are named ``.<name>.vlm-XXXXXXXX.tmp``: the marker lets a rerun delete the
# leftovers of a killed run without touching anyone else's hidden ``.*.tmp`` files.
TEMP_MARK = ".vlm-"
_OWN_TEMP = re.compile(r"^\..+\.vlm-[A-Za-z0-9_]{8}\.tmp$")


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview, fsync: bool = True) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it (unless told not to), then rename it over ``path``."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=".tmp", dir=path.parent)
    except OSError as e:  # name the file the caller asked for, not a temp name or a parent
        raise type(e)(e.errno, e.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:  # a full disk, an I/O error: name the file being written, which the error itself does not
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise type(e)(e.errno, e.strerror, str(path)) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_own_temps(folder: str | os.PathLike, name: str | None = None) -> int:
    """Delete the temp files our atomic writes left in ``folder`` (only for ``name`` if given); returns the count.

    Only call this while holding the lock that every writer of those files holds, or a
    running writer's temp file could vanish under it.
    """
    folder, removed = Path(folder), 0
    if not folder.is_dir():
        return 0
    prefix = f".{name}{TEMP_MARK}" if name else "."
    for entry in os.scandir(folder):
        if entry.name.startswith(prefix) and _OWN_TEMP.match(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


def lock_path(target: str | os.PathLike) -> Path:
    """The hidden ``.<name>.lock`` beside ``target`` that ``file_lock`` and ``try_lock`` use."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


class LockedError(Exception):
    """Another process holds the lock (``try_lock``); ``holder`` is the note it left, e.g. its pid."""

    def __init__(self, path: Path, holder: str):
        super().__init__(str(path))
        self.path, self.holder = path, holder


@contextlib.contextmanager
def try_lock(target: str | os.PathLike, note: str = "") -> Iterator[None]:
    """Like ``file_lock``, but raise LockedError at once instead of waiting when another process holds it.

    ``note`` (e.g. "pid 123") is written into the lock file for whoever is refused next.
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise LockedError(path, f.read().strip()) from None
        f.seek(0)
        f.truncate()
        f.write(note)
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def file_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on a hidden ``.<name>.lock`` beside ``target`` (blocks until free).

    The lock is a separate file because ``target`` itself is replaced by rename on every write.
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_dir(path: str | os.PathLike, what: str = "folder") -> list[Path]:
    """Create ``path`` (and parents) and check that it is a writable folder; return the folders created.

    Fails with one line naming the path and the reason (a file in the way, read-only storage,
    no permission), before any work is done that would then be lost.
    """
    path = Path(path)
    missing, probe = [], path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if path.exists() and not path.is_dir():
        raise VlmError(f"{what} {path} exists and is not a directory", hint="choose another path, or move that file.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VlmError(f"cannot create {what} {path}: {e.strerror or e}",
                       hint="choose a path on writable storage.") from None
    check_writable(path, what)
    return missing


def check_writable(folder: str | os.PathLike, what: str = "folder") -> None:
    """Raise VlmError unless a file can be created in ``folder`` (tried for real: root and read-only mounts)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=f".write-probe{TEMP_MARK}", suffix=".tmp", dir=folder)
    except OSError as e:
        raise VlmError(f"cannot write to {what} {folder}: {e.strerror or e}",
                       hint="choose a path on writable storage, or fix its permissions.") from None
    os.close(fd)
    os.unlink(probe)


def now() -> str:
    """The time now, in UTC, as ISO 8601 to the second: what run records and status files store."""
    return datetime.now(UTC).isoformat(timespec="seconds")
