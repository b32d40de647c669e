"""`pulse-fm serve --workers N`: N gateway processes on one port.

The gateway is GIL-bound (one event loop does HTTP, admission and hand-offs), so on N cores N
processes are the way to use them. Each worker listens on its own socket bound with SO_REUSEPORT:
the kernel spreads new connections evenly over them (one shared socket would not: an idle worker
accepts a whole burst of keep-alive connections in one wake-up and keeps them). The supervisor
(this module, the parent process):
- reserves the port first (a bound, never-listening SO_REUSEPORT socket: the port is checked, and
  `--port 0` gets a free one) and starts the workers (multiprocessing's spawn method: fresh
  interpreters);
- gives the workers one metrics folder (PROMETHEUS_MULTIPROC_DIR, emptied at start): /metrics in
  any worker shows the sum of all (service/metrics.py);
- restarts a worker that dies (its metric files are marked dead, so live gauges drop it), waiting
  `RESTART_BACKOFF_S` between restarts of one slot so that a crash loop does not spin;
- on SIGTERM / SIGINT stops them all (each drains for `shutdown_timeout_s`), then exits.

Each worker is a whole gateway: its own model sessions, micro-batcher, admission limits and LRU
cache. Limits such as `max_inflight_requests` are per worker; a shared cache needs Redis.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from service.settings import Settings

log = logging.getLogger("pulsefm.gateway")
RESTART_BACKOFF_S = 1.0


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket on (host, port) that other SO_REUSEPORT sockets of this user may share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP;
    # without it a head and a body written apart waited for the client's delayed ACK (~40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def run_worker(host: str, port: int, overrides: dict[str, Any], log_level: str) -> None:
    """One worker: the gateway on its own SO_REUSEPORT socket (uvicorn listens on it after the
    lifespan, so no connection waits for the models)."""
    from service import logs
    from service.serve import run_gateway

    settings = Settings(**overrides)
    logs.configure(settings.log_format, log_level)
    run_gateway(settings, host, port, log_level, bind(host, port))


@dataclass
class Supervisor:
    host: str
    port: int
    workers: int
    overrides: dict[str, Any]
    log_level: str
    shutdown_timeout_s: float
    procs: list[BaseProcess | None] = field(default_factory=list)
    stopping: bool = False

    def start(self, slot: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(
            target=run_worker,
            args=(self.host, self.port, self.overrides, self.log_level),
            name=f"pulsefm-worker-{slot}",
        )
        proc.start()
        self.procs[slot] = proc
        log.info("worker %d started (pid %s)", slot, proc.pid)

    def run(self) -> int:
        self.procs = [None] * self.workers
        for slot in range(self.workers):
            self.start(slot)
        last_start = [time.monotonic()] * self.workers
        while not self.stopping:
            time.sleep(0.2)
            for slot, proc in enumerate(self.procs):
                if self.stopping or proc is None or proc.is_alive():
                    continue
                _mark_dead(proc.pid)
                log.error("worker %d (pid %s) exited with %s; restarting", slot, proc.pid, proc.exitcode)
                wait = RESTART_BACKOFF_S - (time.monotonic() - last_start[slot])
                if wait > 0:
                    time.sleep(wait)
                self.start(slot)
                last_start[slot] = time.monotonic()
        self.stop()
        return 0

    def stop(self) -> None:
        live = [p for p in self.procs if p is not None and p.is_alive()]
        for p in live:
            p.terminate()  # SIGTERM: uvicorn drains its connections
        deadline = time.monotonic() + self.shutdown_timeout_s + 5
        for p in live:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
        for proc in self.procs:
            if proc is not None:
                _mark_dead(proc.pid)


def _mark_dead(pid: int | None) -> None:
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def metrics_folder() -> tuple[Path, bool]:
    """PROMETHEUS_MULTIPROC_DIR if set (its *.db emptied: values of an earlier run would be added),
    else a new temporary folder (True: remove it at exit); exported for the workers."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="pulsefm-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for f in path.glob("*.db"):
        f.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path, not given


def serve(host: str, port: int, settings: Settings, overrides: dict[str, Any], log_level: str) -> int:
    """Supervise `settings.workers` workers; each builds its settings from `overrides` (and the
    environment it inherits), as `settings` was."""
    metrics_dir, created = metrics_folder()
    reserved = bind(host, port)  # never listens: holds the port, receives no connection
    port = reserved.getsockname()[1]
    workers = settings.workers
    sup = Supervisor(host, port, workers, overrides, log_level, settings.shutdown_timeout_s)

    def stop(signum: int, frame: Any) -> None:
        sup.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"pulse-fm gateway: {workers} workers on http://{host}:{port}", flush=True)
    try:
        return sup.run()
    finally:
        reserved.close()
        if created:
            shutil.rmtree(metrics_dir, ignore_errors=True)
