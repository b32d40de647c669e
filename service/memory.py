"""Giving freed memory back to the system after a large request.

glibc keeps what a thread frees in that thread's arena for reuse. After the arrays of a large body
(tens of MB decoded, cut into windows and preprocessed on the CPU threads) the gateway stayed
50-110 MiB larger than with the trim below (docs/operating.md, "Memory after large bodies").
`malloc_trim(0)` returns the free pages of every arena. It runs in the CPU pool (ctypes lets go of
the GIL during the call), only after bodies of at least `TRIM_AFTER_BYTES`. Where the C library is
not glibc, nothing is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import Callable
from concurrent.futures import Executor

TRIM_AFTER_BYTES = 8 << 20


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return None
    return trim


MALLOC_TRIM = _malloc_trim()


def release_after(body_bytes: int, executor: Executor) -> None:
    """After a request whose body had `body_bytes`: return freed memory to the system, off the
    event loop, when the body was large."""
    if body_bytes >= TRIM_AFTER_BYTES and MALLOC_TRIM is not None:
        with contextlib.suppress(RuntimeError):  # the pool already shut down (the gateway stopping)
            asyncio.get_running_loop().run_in_executor(executor, MALLOC_TRIM, 0)
