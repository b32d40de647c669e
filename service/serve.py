"""`pulse-fm serve`: run the gateway with uvicorn (settings from flags, PULSEFM_* variables or .env).

    pulse-fm serve                                   # 127.0.0.1:8080, onnxruntime, ./model_repository
    pulse-fm serve --host 0.0.0.0 --redis-url redis://127.0.0.1:6379/0
    pulse-fm serve --backend triton --triton-url 127.0.0.1:8001
    pulse-fm serve --workers 2                       # one process per core (service/workers.py)

Open http://127.0.0.1:8080/docs for the API with examples.
"""

from __future__ import annotations

import argparse
import gc
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pulsefm.cli import HelpFormatter
from service.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pulse-fm serve", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--repo", type=Path, help="model repository (default: ./model_repository)")
    p.add_argument("--backend", choices=["onnxruntime", "triton"])
    p.add_argument("--triton-url")
    p.add_argument("--redis-url")
    p.add_argument(
        "--workers",
        type=int,
        help="gateway processes sharing the port, one per core (default: PULSEFM_WORKERS, else 1); "
        "limits and the LRU cache are per worker, share a cache with --redis-url",
    )
    p.add_argument("--log-level", default="info")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from service import logs

    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "repo": args.repo,
            "backend": args.backend,
            "triton_url": args.triton_url,
            "redis_url": args.redis_url,
            "workers": args.workers,
        }.items()
        if v is not None
    }
    settings = Settings(**overrides)
    logs.configure(settings.log_format, args.log_level)
    if settings.workers > 1:
        from service import workers

        return workers.serve(args.host, args.port, settings, overrides, args.log_level)
    run_gateway(settings, args.host, args.port, args.log_level)
    return 0


def run_gateway(
    settings: Settings, host: str, port: int, log_level: str, sock: socket.socket | None = None
) -> None:
    """One gateway process: the app under uvicorn, on `sock` (a worker's, service/workers.py) or
    on a socket uvicorn binds. Imports the app, and with it the metrics, only here: a supervisor
    never does, its workers do after PROMETHEUS_MULTIPROC_DIR is set."""
    import uvicorn

    from service.app import create_app
    from service.server import uvicorn_config

    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)  # the whole process: not in the app
    limit_blas_threads(settings.blas_threads)
    config = uvicorn_config(create_app(settings), settings, host, port, log_level=log_level, log_config=None)
    if settings.gc_freeze:  # imported modules and the app live for ever: out of the collector's view
        gc.collect()
        gc.freeze()
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)


def limit_blas_threads(n: int) -> None:
    """At most `n` threads in every BLAS library loaded (numpy's and scipy's OpenBLAS), for the rest
    of the process: a LAPACK call holds the GIL until it returns, and spread over threads that
    compete with onnxruntime for the cores it returns later (settings `blas_threads`)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")


if __name__ == "__main__":
    raise SystemExit(main())
