"""Keep PyTorch single-threaded inside the decode threads."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from functools import cache

import torch

__all__ = ["single_threaded_torch"]

logger = logging.getLogger(__name__)

# The OpenMP runtimes PyTorch wheels load (Linux, macOS, Windows).
_OPENMP_LIBRARIES = ("libgomp.so.1", "libomp.dylib", "libiomp5md.dll", "vcomp140.dll")


@cache
def _omp_set_num_threads() -> Callable[[int], None] | None:
    for name in _OPENMP_LIBRARIES:
        try:
            # A library this process has already loaded is found by its name.
            fn: Callable[[int], None] = ctypes.CDLL(name).omp_set_num_threads
        except (OSError, AttributeError):
            continue
        return fn
    return None


def single_threaded_torch() -> None:
    """Run this thread's PyTorch operations on this thread alone (a thread initializer).

    Each decode thread resizes photos with PyTorch. Left alone, every such thread
    starts an OpenMP team as large as the machine, so decode threads and the networks'
    own team oversubscribe the cores; OpenMP then stops spinning between parallel
    regions and the networks slow down measurably (``benchmarks/speed.py``).
    ``torch.set_num_threads`` cannot be used here: it also changes the process-wide
    default. OpenMP's thread count is per thread, so this sets only that, after
    PyTorch's own lazy per-thread initialisation (which would otherwise undo it).
    """
    torch.get_num_threads()  # runs PyTorch's per-thread initialisation first
    fn = _omp_set_num_threads()
    if fn is not None:
        fn(1)
    if torch.get_num_threads() != 1:
        logger.debug("could not make PyTorch single-threaded in a decode thread")
