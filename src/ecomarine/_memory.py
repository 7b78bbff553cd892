"""Give freed heap memory back to the operating system between batches."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from functools import cache

__all__ = ["release_free_memory"]


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # The symbols already loaded into this process, libc's among them: no library
        # search (ctypes.util.find_library would run ldconfig in a subprocess).
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # glibc only; not musl
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> None:
    """Return free heap pages to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Decoding photos of varying sizes in several threads leaves glibc's per-thread heaps
    fragmented: freed image buffers stay mapped and the resident size creeps up over
    thousands of photos. ``Pipeline.predict_many`` trims every few dozen photos, which
    keeps a long run flat without making each batch fault its buffers back in.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
