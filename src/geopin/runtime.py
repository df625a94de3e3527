"""How this process uses the machine: torch and native thread pools, and glibc's handling of freed memory.

Kept apart from the stages so that any stage (embed, train's heads, explain, a cluster worker) can set them
without importing another stage.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from typing import Any, Iterator


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with `threads` torch threads (default: all cores) and restore the previous setting."""
    import torch

    previous = torch.get_num_threads()
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters
_GLIBC_DEFAULTS = {_M_MMAP_MAX: 65536, _M_TRIM_THRESHOLD: 128 * 1024}


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """While the block runs, glibc keeps freed memory for reuse instead of returning it to the kernel.

    Each batch's activations (tens to hundreds of MB) are mmap'ed and unmapped again when freed, so every
    batch page-faults its memory back in: on the 2-core reference machine a third of the CPU time went to
    the kernel and the forward pass ran ~1.5x slower. Yields False (and does nothing) where mallopt is absent.
    Afterwards glibc's default limits are set back and the freed memory is returned to the system.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        malloc_trim = libc.malloc_trim
    except (OSError, AttributeError):
        yield False
        return
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    try:
        yield ok
    finally:
        for param, value in _GLIBC_DEFAULTS.items():
            mallopt(param, value)
        malloc_trim(0)


def keep_freed_memory_for_life() -> bool:
    """keep_freed_memory for the rest of this process (a worker that embeds until it exits); False where absent."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1


def limit_native_threads(threads: int) -> Any:
    """BLAS and OpenMP pools (numpy, faiss, torch's) of a worker to its share of the cores: by default each
    sizes itself to the whole machine, and two workers on 2 cores then run 4+ threads that wait on each other."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a scikit-learn dependency, so normally present; without it the pools stay as they are
        return None
    return threadpool_limits(limits=threads)
