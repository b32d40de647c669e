"""Probes and metrics: /healthz (liveness, no I/O), /readyz (models + backend), /metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.auth import GatewayState
from service.metrics import BACKEND_UP, exposition

router = APIRouter()


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str | int]:
    return {"status": "alive", "worker": os.getpid()}


@router.get("/readyz", summary="Readiness: at least one model version loaded and warmed, backend reachable")
async def readyz(state: GatewayState) -> Response:
    backend_ok = await state.backend.health()
    BACKEND_UP.set(1 if backend_ok else 0)
    ok = state.ready and backend_ok and bool(state.registry.models)
    body = {
        "ready": ok,
        "backend": state.backend.name,
        "backend_ok": backend_ok,
        "models": len(state.registry.all()),
        "failed": len(state.registry.failed),
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics() -> Response:
    return PlainTextResponse(exposition(), media_type=CONTENT_TYPE_LATEST)
