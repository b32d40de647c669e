"""`pulse-fm serve`: run the gateway with uvicorn (settings from flags, PULSEFM_* variables or .env).

    pulse-fm serve                                   # 127.0.0.1:8080, onnxruntime, ./model_repository
    pulse-fm serve --host 0.0.0.0 --redis-url redis://127.0.0.1:6379/0
    pulse-fm serve --backend triton --triton-url 127.0.0.1:8001
    pulse-fm serve --workers 2                       # one process per core (service/workers.py)

Open http://127.0.0.1:8080/docs for the API with examples.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pulsefm.cli import HelpFormatter


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
    from service.settings import Settings

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
    if settings.workers > 1:
        from service import workers

        logs.configure(settings.log_format, args.log_level)
        return workers.serve(args.host, args.port, settings.workers, overrides, args.log_level)
    import uvicorn

    from service.app import create_app  # (imports the metrics: after the workers' branch)
    from service.server import uvicorn_config

    logs.configure(settings.log_format, args.log_level)
    sys.setswitchinterval(
        settings.gil_switch_interval_ms / 1000
    )  # the whole process: set here, not in the app
    config = uvicorn_config(
        create_app(settings), settings, args.host, args.port, log_level=args.log_level, log_config=None
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
