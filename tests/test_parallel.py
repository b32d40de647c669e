"""Worker processes start clean, so a caller's thread-owning objects cannot hang them."""

from __future__ import annotations

import os
import sys


def _inherited(_: int) -> tuple[bool, int]:
    return "tests._parent_only_state" in sys.modules, os.getpid()


def test_pool_workers_do_not_inherit_the_callers_state() -> None:
    from training.parallel import process_pool

    # a fork would copy this module entry (and, in CI, a gRPC channel that hung a fork's finaliser)
    sys.modules["tests._parent_only_state"] = sys
    try:
        with process_pool(2) as pool:
            results = list(pool.map(_inherited, range(4)))
    finally:
        del sys.modules["tests._parent_only_state"]
    assert not any(inherited for inherited, _ in results)
    assert all(pid != os.getpid() for _, pid in results)
