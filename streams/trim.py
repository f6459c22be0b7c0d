"""Freed memory given back to the system: glibc's ``malloc_trim``, every ``CVM_WORKER_TRIM_S`` seconds.

A worker's batches allocate and free a lot: the decoded events, the states of the customers a batch touches, the
score messages of its scorings (a batch of a backlog whose ticks re-score the whole table under a new model version
makes one per customer). glibc keeps the pages of what was freed in its arenas, one per thread that allocated: after
the bench's pipeline (400,000 events, 140,000 customers) a worker held 320 to 370 MB of freed blocks in them, a third
of its resident memory, and kept it for good. :func:`malloc_trim` hands their free pages back (tens of milliseconds,
once every ``CVM_WORKER_TRIM_S``: no change in the bench's CPU per event); the next batches take them again as they
need them. Where there is no glibc (musl, macOS) it does nothing.

Python's own allocator (blocks up to 512 bytes) keeps its 1 MB arenas until every block in one is free: that part of
what a worker holds after a peak is not returned by this (docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

__all__ = ["Trimmer", "malloc_trim"]

log = logging.getLogger("cvm.worker")


def _libc_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_TRIM = _libc_trim()


def malloc_trim() -> bool:
    """Give the free pages of glibc's arenas back to the system; whether there was glibc to ask."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class Trimmer:
    """Calls ``trim`` at most once every ``every_s`` seconds of ``monotonic`` (never when ``every_s`` is 0).

    >>> now = [0.0]; calls = []
    >>> t = Trimmer(10.0, lambda: now[0], lambda: calls.append(now[0]) or True)
    >>> for now[0] in (0.0, 5.0, 10.0, 12.0, 21.0):
    ...     t.maybe()
    >>> calls
    [10.0, 21.0]
    """

    def __init__(
        self, every_s: float, monotonic: Callable[[], float] = time.monotonic, trim: Callable[[], bool] = malloc_trim
    ) -> None:
        self.every_s = every_s
        self.monotonic = monotonic
        self.trim = trim
        self.next = monotonic() + every_s
        self.trims = 0

    def maybe(self) -> None:
        """Trim if it is time."""
        if self.every_s <= 0:
            return
        now = self.monotonic()
        if now >= self.next:
            self.next = now + self.every_s
            if self.trim():
                self.trims += 1
