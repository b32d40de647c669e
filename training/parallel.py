"""Process pools that are safe to open from any process, a test runner or a server included."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool whose workers start from a clean interpreter (forkserver), not a fork of the caller.

    A forked child inherits the caller's objects but not its threads; when its garbage collector
    finalises one that joins a thread (a gRPC channel does), the child spins forever. Seen in CI:
    a `prepare` worker hung in grpc's finaliser after an earlier test had used tritonclient.
    """
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"))
