"""`pulse-fm prepare --engine dask --address ADDR`: the chunk tasks on a Dask distributed cluster.

Why Dask distributed (not Ray): pure-Python wheels of a few MB; a scheduler and its workers are
one command each (`dask scheduler`, `dask worker ADDR`) on any machine that has this package;
its futures API is the one `concurrent.futures` gives the local process pool, so the same chunk
functions run unchanged. Ray brings a larger native runtime (GCS, raylet, object store) that this
work — independent, file-writing tasks — does not use.

The commit protocol stays the store's own (training/store.py): a chunk writes its shards
atomically and its manifest part last, so a chunk is done exactly when its part exists.
- A worker killed mid-chunk: the scheduler reruns its task on another worker (Dask's
  `distributed.scheduler.allowed-failures`); the rerun overwrites the half-written files.
- The driver killed: rerun the same command; finished chunks are skipped (`resuming: ...`).
Every worker must reach the store: a shared file system, or an fsspec URL such as `s3://...`
(training/storage.py; each file is one atomic PUT there, so the commit protocol is the same).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from training.store import ChunkResult

Job = tuple[int, Callable[..., ChunkResult], tuple[Any, ...]]


def run_on_dask(jobs: list[Job], address: str, desc: str, timeout_s: float = 30.0) -> list[ChunkResult]:
    """Submit every chunk to the scheduler at `address`; results as they complete."""
    try:
        from distributed import Client, as_completed
    except ImportError as exc:  # pragma: no cover - the [train] extra installs it
        raise SystemExit(
            "error: --engine dask needs the 'distributed' package (pip install distributed)"
        ) from exc
    results: list[ChunkResult] = []
    with Client(address, timeout=timeout_s) as client:
        workers = len(client.scheduler_info()["workers"])
        if workers == 0:
            raise SystemExit(f"error: the Dask scheduler at {address} has no workers")
        futures = [
            client.submit(fn, *args, key=f"pulsefm-chunk-{chunk:05d}-{desc}", pure=False)
            for chunk, fn, args in jobs
        ]
        with tqdm(
            total=len(jobs), desc=f"{desc} ({workers} Dask workers)", unit="chunk", disable=None
        ) as bar:
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update()
    return results


@contextmanager
def local_cluster(
    workers: int, timeout_s: float = 60.0
) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A Dask scheduler and `workers` one-thread worker processes on loopback, as separate
    processes (tests, benchmarks, one big machine): yields (scheduler address, worker processes),
    once every worker has joined; all are killed at exit."""
    from distributed import Client

    folder = Path(tempfile.mkdtemp(prefix="pulsefm-dask-"))
    sched_file = str(folder / "scheduler.json")

    def spawn(*args: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", *args, "--no-dashboard", "--scheduler-file", sched_file]
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    scheduler = spawn("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0")
    procs = [
        spawn("distributed.cli.dask_worker", "--nthreads", "1", "--name", f"w{i}") for i in range(workers)
    ]
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                address = str(json.loads(Path(sched_file).read_text())["address"])
                with Client(address, timeout=5) as client:
                    if len(client.scheduler_info()["workers"]) == workers:
                        break
            except (OSError, ValueError, KeyError):  # not written yet, or not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local Dask cluster did not come up within {timeout_s:g} s")
            time.sleep(0.3)
        yield address, procs
    finally:
        for proc in [*procs, scheduler]:
            proc.kill()
            proc.wait(10)
