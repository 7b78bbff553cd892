"""Reading files the user named, safely: regular files only, with a size cap checked first.

Every reader of user-supplied files (images, configs, weights, galleries, CSVs) opens them
through :func:`open_regular` or :func:`read_regular`. A FIFO, a device (``/dev/zero``), a
socket or a directory is refused without reading a byte and without blocking (the file is
opened non-blocking, then checked with ``fstat``); a file larger than the caller's cap is
refused before it is read, and the read itself is bounded by the cap (a file that grows
while it is read is refused too).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["MiB", "open_regular", "read_regular", "safe_is_file"]

MiB = 1024 * 1024
_CHUNK = MiB

Fail = Callable[[str], Exception]


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def open_regular(
    path: str | os.PathLike[str],
    fail: Fail,
    *,
    max_bytes: int | None = None,
    follow_symlinks: bool = True,
) -> IO[bytes]:
    """Open a regular file for binary reading, or raise ``fail(reason)``.

    Args:
        path: The file.
        fail: Makes the exception to raise from a reason (``"no such file"``, ...).
        max_bytes: Refuse files larger than this (checked before reading).
        follow_symlinks: False refuses a symbolic link itself.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise fail("no such file") from exc
    except IsADirectoryError as exc:
        raise fail("is a directory, not a file") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise fail("is a symbolic link (refused)") from exc
        raise fail(f"cannot open file ({exc.strerror or exc})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _kind(info.st_mode)
            if kind == "a directory":
                raise fail("is a directory, not a file")
            raise fail(f"is {kind}, not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise fail(f"file is {info.st_size:,} bytes, over the {max_bytes:,}-byte limit")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(
    path: str | os.PathLike[str],
    fail: Fail,
    *,
    max_bytes: int,
    follow_symlinks: bool = True,
) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, or ``fail(reason)``."""
    with open_regular(path, fail, max_bytes=max_bytes, follow_symlinks=follow_symlinks) as fh:
        try:
            # The stated size first (never a buffer of the whole cap), then whatever a
            # growing file adds, in bounded chunks, up to the cap.
            chunks = [fh.read(os.fstat(fh.fileno()).st_size)]
            total = len(chunks[0])
            while chunk := fh.read(min(_CHUNK, max_bytes + 1 - total)):
                chunks.append(chunk)
                total += len(chunk)
                if total > max_bytes:
                    raise fail(f"file grew past the {max_bytes:,}-byte limit while it was read")
        except OSError as exc:
            raise fail(f"cannot read file ({exc.strerror or exc})") from exc
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def safe_is_file(path: str | os.PathLike[str]) -> bool:
    """``Path.is_file`` that answers False instead of raising (too-long names, loops, ...)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False
