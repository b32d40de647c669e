"""/v1/embed and /v1/predict: read the body, run the pipeline (cancelled if the client leaves), answer."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Coroutine
from email.utils import formatdate
from typing import Any, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import logs, memory, schemas
from service.auth import ApiKey, GatewayState, key_digest
from service.decoding import JSON, NPY, fail
from service.errors import ClientGone, UnsupportedEncoding
from service.metrics import RETIRING_CALLS
from service.pipeline import Body, Pipeline, Result
from service.registry import ModelVersion
from service.state import State

router = APIRouter()
T = TypeVar("T")
# both routes take the same bodies and give the same errors (OpenAPI)
BODIES_AND_ERRORS: dict[str, Any] = {
    "openapi_extra": schemas.REQUEST_BODY,
    "responses": schemas.ERROR_RESPONSES,
}


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


async def read_body(request: Request) -> Body:
    """The body (its size and arrival time are bounded by the front door, service/asgi.py)."""
    data = await request.body()  # a client leaving mid-body: ClientDisconnect, 499 (service/errors.py)
    ctype = request.headers.get("content-type", JSON)
    h = request.headers
    encoding = h.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):  # else a compressed body is refused as a malformed .npy / JSON
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding[:40]!r} is not decoded here: send the body uncompressed"
        )
    client = (
        h.get("x-client-id", "")[:128]
        or h.get("x-api-key")
        or (request.client.host if request.client else None)
    )
    query = request.query_params
    repeated = next((name for name in query if len(query.getlist(name)) > 1), None)
    if repeated is not None:  # else the last one would be used, silently
        raise fail(
            "parameter", f"query parameter {repeated!r:.40} is given {len(query.getlist(repeated))} times"
        )
    return Body(data, ctype, h.get("x-shape"), dict(query), client)


def model_info(mv: ModelVersion) -> dict[str, Any]:
    return {
        "modality": mv.modality,
        "version": mv.version,
        "preprocess_version": mv.preprocess_version,
        "encoder_sha256": mv.encoder_sha256[:12],
        "training_data": mv.encoder_card.get("training_data", ""),
    }


def version_headers(request: Request, mv: ModelVersion) -> dict[str, str]:
    """X-Model-Version on every answer; for a retiring version also Deprecation (RFC 9745) and
    Sunset (RFC 8594), and the caller is counted (by API key digest, bounded by the keys set)."""
    headers = {"X-Model-Version": str(mv.version)}
    if mv.sunset is not None:
        headers["Deprecation"] = "true"
        headers["Sunset"] = formatdate(mv.sunset, usegmt=True)
        headers["Link"] = '</v1/models>; rel="deprecation"'
        RETIRING_CALLS.labels(mv.modality, str(mv.version), key_digest(request, "anonymous")).inc()
    return headers


def json_response(doc: dict[str, Any], headers: dict[str, str]) -> Response:
    return Response(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON, headers=headers)


async def _serve(request: Request, state: State, endpoint: str, with_probes: bool) -> Result:
    body = await read_body(request)
    try:
        res = await until_disconnect(request, Pipeline(state, endpoint).run(body, with_probes))
    finally:
        memory.release_after(len(body.data), state.cpu)
    request.scope[logs.SCOPE_KEY] = {  # for the access log (service/logs.py)
        "modality": res.model.modality,
        "model_version": res.model.version,
        "windows": len(res.windows),
        "windows_used": len(res.used),
    }
    return res


def window_doc(res: Result) -> dict[str, Any]:
    win = res.windows
    return {
        "model": model_info(res.model),
        "window_s": round(win.length / win.fs, 3),
        "stride_s": win.stride_s,
        "quality": schemas.quality_rows(win, res.quality),
        "recordings": schemas.recordings(win),
        "windows_used": len(res.used),
    }


@router.post(
    "/v1/embed",
    response_model=schemas.EmbedResponse,
    **BODIES_AND_ERRORS,
    summary="256-d embeddings of PPG / ECG recordings, per window",
)
async def embed(request: Request, state: GatewayState, _: ApiKey) -> Response:
    res = await _serve(request, state, "/v1/embed", with_probes=False)
    if NPY in request.headers.get("accept", ""):
        buf = io.BytesIO()
        np.save(buf, res.embeddings)  # unusable windows are NaN rows
        headers = version_headers(request, res.model) | {"X-Windows-Used": str(len(res.used))}
        return Response(buf.getvalue(), media_type=NPY, headers=headers)
    usable = set(res.used)
    doc = window_doc(res) | {
        "embeddings": [res.embeddings[w] if w in usable else None for w in range(len(res.windows))],
        "aggregate": res.mean_embedding,
    }
    return json_response(doc, version_headers(request, res.model))


@router.post(
    "/v1/predict",
    response_model=schemas.PredictResponse,
    **BODIES_AND_ERRORS,
    summary="Probe outputs (age, BMI, sex, ...) per window and for the mean embedding",
)
async def predict(request: Request, state: GatewayState, _: ApiKey) -> Response:
    res = await _serve(request, state, "/v1/predict", with_probes=True)
    assert res.predictions is not None
    outputs = res.model.outputs
    per_window: list[dict[str, Any] | None] = [None] * len(res.windows)
    for row, w in zip(res.predictions[:-1], res.used, strict=True):
        per_window[w] = schemas.prediction(outputs, row, res.model.plausibility)
    doc = window_doc(res) | {
        "predictions": per_window,
        "aggregate": schemas.prediction(outputs, res.predictions[-1], res.model.plausibility),
    }
    return json_response(doc, version_headers(request, res.model))
