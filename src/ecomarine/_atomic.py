"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target.

A reader never sees a half-written file, and a crash mid-write leaves the previous
version in place. Temporary files carry the writer's process id; a later write to the same
target removes those whose writer is gone (killed mid-write) or that are a day old.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "remove_stale_temporaries",
]

# Temporaries older than this are removed whoever wrote them (a writer that stalls for a
# day has failed); younger ones only when their writer's process no longer exists.
_STALE_SECONDS = 24 * 3600
_PID = re.compile(r"\.(\d+)-[^.]*\.tmp$")


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; written files should get the usual
# permissions (0666 minus the umask), like a plain open() would give them.
_FILE_MODE = 0o666 & ~_current_umask()


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Flush a directory entry to disk (no-op where the OS does not support it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. Windows, some network filesystems
        pass
    finally:
        os.close(fd)


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or we cannot tell): keep it
    return True


def remove_stale_temporaries(folder: Path, pattern: str) -> int:
    """Remove leftover temporaries matching ``pattern`` in ``folder``; return how many.

    A temporary is stale when the process that made it is gone, or it is a day old.
    """
    removed = 0
    now = time.time()
    for path in folder.glob(pattern):
        match = _PID.search(path.name)
        try:
            old = now - path.lstat().st_mtime > _STALE_SECONDS
        except OSError:
            continue
        if old or (match is not None and not _alive(int(match.group(1)))):
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a temporary file for binary writing; on success, rename it to ``path``.

    Args:
        path: The final file path. Its parent folder is created if needed.

    Yields:
        A binary file object. If the block raises, the target is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent, f".{glob_escape(target.name)}.*.tmp")
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).chmod(_FILE_MODE)
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace ``path`` with ``data``."""
    with atomic_write(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    atomic_write_bytes(path, text.encode("utf-8"))
