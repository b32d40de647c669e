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
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

log = logging.getLogger("pulsefm.gateway")
RESTART_BACKOFF_S = 1.0


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket on (host, port) that other SO_REUSEPORT sockets of this user may share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def run_worker(host: str, port: int, overrides: dict[str, Any], log_level: str) -> None:
    """One worker: the gateway app under uvicorn on its own SO_REUSEPORT socket."""
    import uvicorn

    from service import logs
    from service.app import create_app
    from service.server import uvicorn_config
    from service.settings import Settings

    settings = Settings(**overrides)
    logs.configure(settings.log_format, log_level)
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    sock = bind(host, port)  # uvicorn listens after the lifespan: no connection waits for the models
    config = uvicorn_config(create_app(settings), settings, host, port, log_level=log_level, log_config=None)
    uvicorn.Server(config).run(sockets=[sock])


@dataclass
class Supervisor:
    host: str
    port: int
    workers: int
    overrides: dict[str, Any]
    log_level: str
    shutdown_timeout_s: float
    metrics_dir: Path
    procs: list[BaseProcess | None] = field(default_factory=list)
    restarts: int = 0
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
                self.restarts += 1
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


def serve(host: str, port: int, workers: int, overrides: dict[str, Any], log_level: str) -> int:
    from service.settings import Settings

    settings = Settings(**overrides)  # fail here, once, on a bad setting
    metrics_dir, created = metrics_folder()
    reserved = bind(host, port)  # never listens: holds the port, receives no connection
    port = reserved.getsockname()[1]
    sup = Supervisor(host, port, workers, overrides, log_level, settings.shutdown_timeout_s, metrics_dir)

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
