"""The gateway: FastAPI app with /v1/embed, /v1/predict, /v1/models, health, metrics and admin.

    pulse-fm serve                       # embedded default: onnxruntime in-process, LRU cache
    PULSEFM_REDIS_URL=redis://127.0.0.1:6379/0 PULSEFM_BACKEND=triton pulse-fm serve

Request path: size limit -> decode -> validate (422 with reasons) -> cache lookup per segment ->
preprocess the misses (training's code) -> micro-batcher -> backend -> cache write ->
(predict) probe heads -> response. Errors map to HTTP status in `ERRORS`, one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pulsefm import __version__
from pulsefm import contract as C
from service import schemas
from service.backends import RETIRE_AFTER_S, Backend, BackendUnavailable, OrtBackend, TritonBackend
from service.batcher import MicroBatcher, Overloaded
from service.cache import Cache, LRUCache, RedisCache, cache_key, decode, encode
from service.metrics import BACKEND_UP, FAILURES, MODEL_INFO, REQUESTS, SEGMENTS, STAGE_SECONDS
from service.registry import ModelVersion, Registry, UnknownModel
from service.settings import Settings
from service.signals import (
    JSON,
    NPY,
    RAW,
    Batch,
    Limits,
    PayloadTooLarge,
    Problem,
    ValidationFailed,
    check_array,
    decode_binary,
    decode_json,
    parse_fs,
    parse_modality,
    preprocess,
)


class Unauthorized(PermissionError):
    pass


class ClientGone(ConnectionError):
    """The client disconnected before its answer was ready; its queued work was dropped."""


class NotReady(RuntimeError):
    pass


# exception -> (HTTP status, failure reason label); the one place errors become responses
ERRORS: dict[type[Exception], tuple[int, str]] = {
    ValidationFailed: (422, "validation"),
    PayloadTooLarge: (413, "too_large"),
    Unauthorized: (401, "unauthorized"),
    UnknownModel: (404, "unknown_model"),
    Overloaded: (429, "overloaded"),
    BackendUnavailable: (503, "backend_unavailable"),
    NotReady: (503, "not_ready"),
    ClientGone: (499, "client_gone"),
}


def error_response(exc: Exception, settings: Settings) -> JSONResponse:
    status, reason = next((v for t, v in ERRORS.items() if isinstance(exc, t)), (500, "internal"))
    FAILURES.labels(reason).inc()
    body: dict[str, Any] = {"error": reason, "detail": str(exc)}
    if isinstance(exc, ValidationFailed):
        body["problems"] = [p.as_dict() for p in exc.problems]
    headers = {"Retry-After": str(settings.retry_after_s)} if status in (429, 503) else None
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class State:
    settings: Settings
    registry: Registry
    backend: Backend
    cache: Cache
    batchers: dict[tuple[str, int], MicroBatcher]
    ready: bool = False
    reload_lock: asyncio.Lock | None = None
    inflight: int = 0  # admitted segments not yet answered

    @contextlib.contextmanager
    def admit(self, n: int) -> Iterator[None]:
        """The concurrency bound: refuse before any work is spent when too much is in flight."""
        if self.inflight + n > self.settings.max_inflight_segments:
            raise Overloaded(
                f"{self.inflight} segments in flight "
                f"(limit {self.settings.max_inflight_segments}); retry later"
            )
        self.inflight += n
        try:
            yield
        finally:
            self.inflight -= n

    def batcher(self, mv: ModelVersion) -> MicroBatcher:
        key = (mv.modality, mv.version)
        b = self.batchers.get(key)
        if b is None:
            b = MicroBatcher(
                functools.partial(self.backend.embed, mv),
                label=mv.modality,
                max_batch=min(self.settings.max_batch, self.backend.max_batch),
                max_wait_s=self.settings.max_wait_ms / 1000,
                max_queued=self.settings.max_queued_segments,
            )
            b.start()
            self.batchers[key] = b
        return b


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "triton":
        return TritonBackend(settings.triton_url, settings.triton_protocol, settings.max_batch)
    return OrtBackend(threads=settings.ort_threads, max_batch=settings.max_batch)


def make_cache(settings: Settings) -> Cache:
    if settings.redis_url:
        return RedisCache(settings.redis_url, settings.cache_ttl_s, settings.redis_timeout_s)
    return LRUCache(settings.lru_entries)


async def reload_models(state: State) -> list[ModelVersion]:
    """Rescan the repository, load + warm new versions, then swap (in-flight requests keep theirs)."""
    assert state.reload_lock is not None
    async with state.reload_lock:
        fresh = Registry(state.registry.repo)
        fresh.reload()
        models = fresh.all()
        await state.backend.load(models)
        warm = getattr(state.backend, "warmup", None)
        if warm is not None:
            await warm(models)
        state.registry.models = fresh.models  # the swap: one assignment
        MODEL_INFO.info({f"{mv.modality}_v{mv.version}": mv.encoder_sha256[:12] for mv in models})
        for key in [
            k for k in state.batchers if (k[0], k[1]) not in {(m.modality, m.version) for m in models}
        ]:
            old = state.batchers.pop(key)
            asyncio.get_running_loop().call_later(RETIRE_AFTER_S, _stop_later, old)
        return models


_BACKGROUND: set[asyncio.Task[None]] = set()


START_RETRY_S = 2.0


async def _start(state: State) -> None:
    """Load models; while the backend (e.g. Triton) is unreachable, /readyz says 503 and we retry."""
    while True:
        try:
            await reload_models(state)
            state.ready = True
            return
        except BackendUnavailable:
            FAILURES.labels("startup").inc()
            await asyncio.sleep(START_RETRY_S)


def _stop_later(batcher: MicroBatcher) -> None:
    task = asyncio.ensure_future(batcher.stop())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def _watch(state: State, every_s: float) -> None:
    last: set[tuple[str, int]] = set()
    while True:
        await asyncio.sleep(every_s)
        try:
            from service.registry import scan

            now = {(m, v) for m, vs in scan(state.registry.repo).items() for v in vs}
            if now != last:
                await reload_models(state)
                last = now
        except Exception:  # a half-copied repository must not kill the watcher
            FAILURES.labels("watch").inc()


T = TypeVar("T")


async def until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`, cancelling it if the client disconnects first (the batcher then skips its segments)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone("client disconnected")
    return task.result()


def parse_batch(body: bytes, ctype: str, shape: str | None, q: dict[str, str], limits: Limits) -> Batch:
    """Decode + validate one request body (JSON, .npy or raw float32) into raw segments."""
    if ctype in (NPY, RAW):
        arr = decode_binary(body, ctype, shape)
        modality, fs = parse_modality(q.get("modality")), parse_fs(q.get("fs"), limits)
        version: Any = q.get("model_version")
        quality: Any = q.get("quality", "basic")
    elif ctype == JSON:
        doc, arr = decode_json(body)
        modality, fs = parse_modality(doc.get("modality")), parse_fs(doc.get("fs"), limits)
        version, quality = doc.get("model_version"), doc.get("quality", "basic")
    else:
        raise ValidationFailed(
            [Problem("content_type", f"unsupported content type {ctype!r}; use {JSON}, {NPY} or {RAW}")]
        )
    if quality not in ("basic", "full"):
        raise ValidationFailed([Problem("quality", "quality must be 'basic' or 'full'")])
    try:
        v = int(version) if version not in (None, "") else None
    except (TypeError, ValueError):
        raise ValidationFailed(
            [Problem("model_version", f"model_version must be an integer, got {version!r}")]
        ) from None
    return Batch(modality, fs, check_array(arr, modality, fs, limits), v, quality)


def create_app(
    settings: Settings | None = None, backend: Backend | None = None, cache: Cache | None = None
) -> FastAPI:
    settings = settings or Settings()
    limits = Limits(settings.max_segments, settings.min_fs, settings.max_fs, settings.duration_tolerance)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = State(
            settings=settings,
            registry=Registry(settings.repo),
            backend=backend or make_backend(settings),
            cache=cache or make_cache(settings),
            batchers={},
            reload_lock=asyncio.Lock(),
        )
        app.state.pulse = state
        if not settings.repo.is_dir():
            raise FileNotFoundError(f"{settings.repo}: model repository not found (see README: make model)")
        tasks = [asyncio.create_task(_start(state))]
        if settings.watch_repo_s > 0:
            tasks.append(asyncio.create_task(_watch(state, settings.watch_repo_s)))
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

    app = FastAPI(
        title="pulse-fm gateway",
        version=__version__,
        description=(
            "Embeddings and probe predictions for wearable PPG and ECG segments. The shipped default model "
            "was trained on a SYNTHETIC cohort: its predictions are demonstrations, not clinical output."
        ),
        lifespan=lifespan,
    )

    def state_of(request: Request) -> State:
        st: State = request.app.state.pulse
        return st

    def require_key(admin: bool) -> Any:
        async def check(request: Request) -> None:
            keys = settings.keys(admin)
            if keys and request.headers.get("x-api-key") not in keys:
                raise Unauthorized("missing or wrong X-API-Key" + (" (admin)" if admin else ""))

        return Depends(check)

    async def handle(_request: Request, exc: Exception) -> Response:
        return error_response(exc, settings)

    for exc_type in [*ERRORS, Exception]:
        app.add_exception_handler(exc_type, handle)

    async def read_batch(request: Request) -> Batch:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
            raise PayloadTooLarge(
                f"body of {int(length)} bytes exceeds the limit of {settings.max_body_bytes}"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise PayloadTooLarge(f"body exceeds the limit of {settings.max_body_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        ctype = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
        # decoding and checking a large body is CPU work: keep it off the event loop
        return await asyncio.to_thread(
            parse_batch, body, ctype, request.headers.get("x-shape"), dict(request.query_params), limits
        )

    async def embed_batch(
        state: State, batch: Batch, endpoint: str
    ) -> tuple[ModelVersion, np.ndarray, dict[str, Any]]:
        if not state.ready:
            raise NotReady("models are not loaded yet (backend unreachable?); see /readyz")
        mv = state.registry.resolve(batch.modality, batch.model_version)
        SEGMENTS.labels(endpoint, mv.modality).inc(len(batch.x))
        t0 = time.perf_counter()
        name = C.model_name(mv.modality, "encoder")
        keys = [
            cache_key(name, mv.version, mv.preprocess_version, mv.encoder_sha256, batch.fs, s)
            for s in batch.x
        ]
        cached = await state.cache.get_many(keys)
        STAGE_SECONDS.labels("cache", endpoint).observe(time.perf_counter() - t0)
        emb = np.empty((len(batch.x), C.EMBED_DIM), dtype=np.float32)
        miss = [i for i, v in enumerate(cached) if v is None or len(v) != 4 * C.EMBED_DIM]
        for i, v in enumerate(cached):
            if i not in miss and v is not None:
                emb[i] = decode(v)
        quality: dict[str, Any] = {
            "flags": [[] for _ in keys],
            "heart_rate_bpm": [None] * len(keys),
            "sqi": [None] * len(keys),
        }
        need = miss if batch.quality == "basic" else list(range(len(keys)))
        if need:
            t1 = time.perf_counter()
            prep = await asyncio.to_thread(
                preprocess, batch.x[need], batch.fs, mv.spec, batch.quality == "full"
            )
            STAGE_SECONDS.labels("preprocess", endpoint).observe(time.perf_counter() - t1)
            for j, i in enumerate(need):
                quality["flags"][i], quality["heart_rate_bpm"][i], quality["sqi"][i] = (
                    prep.flags[j],
                    prep.heart_rate_bpm[j],
                    prep.sqi[j],
                )
            if miss:
                rows = [need.index(i) for i in miss]
                out = await state.batcher(mv).submit(prep.data[rows], endpoint)
                emb[miss] = out
                await state.cache.set_many({keys[i]: encode(out[j]) for j, i in enumerate(miss)})
        quality["cached"] = [i not in miss for i in range(len(keys))]
        return mv, emb, quality

    async def serve_segments(
        request: Request,
        endpoint: str,
        then: Callable[[ModelVersion, np.ndarray], Awaitable[Any]] | None = None,
    ) -> tuple[ModelVersion, np.ndarray, dict[str, Any], Any]:
        """/embed and /predict: read + validate, admission bound, embeddings (cancelled on disconnect),
        then `then(mv, emb)`, still inside the admission bound."""
        state = state_of(request)
        t0 = time.perf_counter()
        batch = await read_batch(request)
        STAGE_SECONDS.labels("validation", endpoint).observe(time.perf_counter() - t0)
        with state.admit(len(batch.x)):
            mv, emb, quality = await until_disconnect(request, embed_batch(state, batch, endpoint))
            extra = await then(mv, emb) if then is not None else None
        return mv, emb, quality, extra

    def model_info(mv: ModelVersion) -> dict[str, Any]:
        return {
            "modality": mv.modality,
            "version": mv.version,
            "preprocess_version": mv.preprocess_version,
            "encoder_sha256": mv.encoder_sha256[:12],
            "training_data": mv.encoder_card.get("training_data", ""),
        }

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        t0 = time.perf_counter()
        response: Response = await call_next(request)
        path = request.url.path
        if path.startswith("/v1/"):
            REQUESTS.labels(path, str(response.status_code)).inc()
            STAGE_SECONDS.labels("total", path).observe(time.perf_counter() - t0)
        return response

    @app.post(
        "/v1/embed",
        response_model=schemas.EmbedResponse,
        dependencies=[require_key(False)],
        openapi_extra=schemas.REQUEST_BODY,
        responses=schemas.ERROR_RESPONSES,
        summary="256-d embeddings of PPG / ECG segments",
    )
    async def embed(request: Request) -> Response:
        mv, emb, quality, _ = await serve_segments(request, "/v1/embed")
        if NPY in request.headers.get("accept", ""):
            buf = io.BytesIO()
            np.save(buf, emb)
            return Response(buf.getvalue(), media_type=NPY, headers={"X-Model-Version": str(mv.version)})
        return JSONResponse(
            {
                "model": model_info(mv),
                "embeddings": emb.tolist(),
                "quality": schemas.quality_rows(quality),
            }
        )

    @app.post(
        "/v1/predict",
        response_model=schemas.PredictResponse,
        dependencies=[require_key(False)],
        openapi_extra=schemas.REQUEST_BODY,
        responses=schemas.ERROR_RESPONSES,
        summary="Probe outputs (age, BMI, sex, ...) per segment and for the request's mean embedding",
    )
    async def predict(request: Request) -> Response:
        state = state_of(request)

        async def probes(mv: ModelVersion, emb: np.ndarray) -> np.ndarray:
            if not mv.outputs:
                raise UnknownModel(f"{mv.modality} version {mv.version} has no probe heads")
            t1 = time.perf_counter()
            out = await state.backend.predict(mv, np.concatenate([emb, emb.mean(axis=0, keepdims=True)]))
            STAGE_SECONDS.labels("probes", "/v1/predict").observe(time.perf_counter() - t1)
            return out

        mv, _, quality, out = await serve_segments(request, "/v1/predict", probes)
        return JSONResponse(
            {
                "model": model_info(mv),
                "predictions": [schemas.prediction(mv.outputs, row) for row in out[:-1]],
                "aggregate": schemas.prediction(mv.outputs, out[-1]),
                "quality": schemas.quality_rows(quality),
            }
        )

    @app.get(
        "/v1/models", response_model=schemas.ModelsResponse, summary="Served versions and their model cards"
    )
    async def models(request: Request) -> dict[str, Any]:
        state = state_of(request)
        return {"models": [mv.describe() for mv in state.registry.all()], "backend": state.backend.name}

    @app.post(
        "/v1/admin/reload",
        dependencies=[require_key(True)],
        summary="Rescan the repository and load new versions",
    )
    async def reload(request: Request) -> dict[str, Any]:
        models = await reload_models(state_of(request))
        return {"served": [{"modality": m.modality, "version": m.version} for m in models]}

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="Readiness: models loaded and warmed, backend reachable")
    async def readyz(request: Request) -> Response:
        state = state_of(request)
        backend_ok = await state.backend.health()
        BACKEND_UP.set(1 if backend_ok else 0)
        ok = state.ready and backend_ok and bool(state.registry.models)
        body = {
            "ready": ok,
            "backend": state.backend.name,
            "backend_ok": backend_ok,
            "models": len(state.registry.all()),
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
