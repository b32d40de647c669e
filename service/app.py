"""The gateway's app factory: settings, lifespan, the front-door middleware, the routers.

    pulse-fm serve                       # embedded default: onnxruntime in-process, LRU cache
    PULSEFM_REDIS_URL=redis://127.0.0.1:6379/0 PULSEFM_BACKEND=triton pulse-fm serve

Request path: service/asgi.py (request id, admission before the body, body bounds, every answer
counted, unmapped errors -> clean 500) -> service/routes/inference.py -> service/pipeline.py
(validate -> admit -> cache -> preprocess -> batch -> backend -> probes). Exceptions become HTTP
answers in one place: `service.errors.ERRORS`, applied by the front door.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException as StarletteHTTPException

from pulsefm import __version__
from service.asgi import Admission, Frontdoor
from service.backends import Backend
from service.cache import Cache
from service.errors import MethodNotAllowed, NotFound
from service.looplag import StallWatchdog, watch_lag
from service.registry import Registry
from service.routes import docs, health, inference, models
from service.settings import Settings
from service.state import Budget, State, make_backend, make_cache, reload_models, start, watch

__all__ = ["create_app", "reload_models"]

Lifespan = Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]


def lifespan_for(settings: Settings, backend: Backend | None, cache: Cache | None) -> Lifespan:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.repo.is_dir():
            raise FileNotFoundError(f"{settings.repo}: model repository not found (see README: make model)")
        state = State(
            settings=settings,
            registry=Registry(settings.repo, settings.retire_grace_s),
            backend=backend or make_backend(settings),
            cache=cache or make_cache(settings),
            cpu=ThreadPoolExecutor(max_workers=settings.cpu_workers, thread_name_prefix="cpu"),
            shadow=Budget(settings.shadow_max_windows),
        )
        state.drift.executor = state.cpu  # the effective-rank SVD off the event loop
        app.state.pulse = state
        tasks = [asyncio.create_task(start(state))]
        if settings.watch_repo_s > 0 or settings.retry_failed_s > 0 or settings.watch_admin_s > 0:
            tasks.append(asyncio.create_task(watch(state, settings.watch_repo_s)))
        if settings.loop_lag_every_s > 0:
            tasks.append(asyncio.create_task(watch_lag(settings.loop_lag_every_s)))
        watchdog = None
        if settings.loop_stall_log_ms > 0:  # a diagnostic: every thread's stack when the loop stalls
            watchdog = StallWatchdog(settings.loop_stall_log_ms / 1000).start()
            tasks.append(asyncio.create_task(watchdog.beats()))
        await asyncio.wait(tasks[:1], timeout=settings.startup_wait_s)  # ready at once when the backend is
        try:
            yield
        finally:
            state.ready = False
            for t in tasks:
                t.cancel()
            for b in state.batchers.values():
                await b.stop()
            await state.backend.close()
            await state.cache.close()
            state.cpu.shutdown(wait=False, cancel_futures=True)
            if watchdog is not None:
                watchdog.stop()

    return lifespan


async def routing_errors(request: Request, exc: Exception) -> Response:
    """The router's own 404 and 405 become errors of the table (service/errors.py), answered by the
    front door like every other: the same JSON body with the request id, counted by reason."""
    assert isinstance(exc, StarletteHTTPException)
    path = request.url.path[:200]
    if exc.status_code == 404:
        raise NotFound(f"nothing at {request.method} {path}: the routes are listed at /docs")
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        raise MethodNotAllowed(f"{request.method} is not allowed on {path}; allowed: {allow}", allow)
    return await http_exception_handler(request, exc)


def create_app(
    settings: Settings | None = None, backend: Backend | None = None, cache: Cache | None = None
) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="pulse-fm gateway",
        version=__version__,
        description=(
            "Embeddings and probe predictions for wearable PPG and ECG recordings of any length (cut into "
            "60 s / 30 s windows server-side; JSON, .npy, raw float32 or a recording file upload). The "
            "shipped "
            "default model was trained on a SYNTHETIC cohort: its predictions are demonstrations, not "
            "clinical output."
        ),
        lifespan=lifespan_for(settings, backend, cache),
        docs_url=None,  # service/routes/docs.py: the same pages with local assets (offline)
        redoc_url=None,
    )
    app.add_exception_handler(StarletteHTTPException, routing_errors)
    for router in (inference.router, models.router, health.router):
        app.include_router(router)
    docs.mount(app)
    # one admission for the front door and the server's early refusals (service/server.py)
    app.state.admission = Admission(settings.max_inflight_requests, settings.max_body_bytes_in_flight)
    app.add_middleware(
        Frontdoor,
        admission=app.state.admission,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        retry_after_s=settings.retry_after_s,
        send_timeout_s=settings.send_timeout_s,
        access_log=settings.access_log,
    )
    return app
