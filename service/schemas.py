"""Request/response shapes of the API (OpenAPI with examples) and small response builders."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field


class EmbedRequest(BaseModel):
    modality: str = Field(description='"ppg" (4 channels x 60 s) or "ecg" (1 lead x 30 s)', examples=["ecg"])
    fs: float = Field(
        description="sampling rate of the samples sent, Hz (16-4096; resampled)", examples=[128]
    )
    segments: list[list[list[float]]] = Field(
        description="[segment][channel][sample]; a single channel is repeated for PPG",
        examples=[[[[0.0] * 8]]],
    )
    model_version: int | None = Field(None, description="pin a served version (default: the latest)")
    quality: str = Field("basic", description='"basic" (raw checks) or "full" (+ heart rate and SQI, slower)')


class ModelInfo(BaseModel):
    modality: str
    version: int
    preprocess_version: str
    encoder_sha256: str
    training_data: str


class SegmentQuality(BaseModel):
    segment: int
    flags: list[str] = Field(description="soft quality flags: implausible_heart_rate, low_sqi")
    heart_rate_bpm: float | None = None
    sqi: float | None = None
    cached: bool


class EmbedResponse(BaseModel):
    model: ModelInfo
    embeddings: list[list[float]] = Field(description="one 256-d vector per segment")
    quality: list[SegmentQuality]


class Output(BaseModel):
    value: float
    units: str
    kind: str = Field(description="regression, or classification (value is a probability)")


class PredictResponse(BaseModel):
    model: ModelInfo
    predictions: list[dict[str, Output]] = Field(description="per segment: target -> output")
    aggregate: dict[str, Output] = Field(description="the probes on the mean embedding of all segments")
    quality: list[SegmentQuality]


class ModelsResponse(BaseModel):
    backend: str
    models: list[dict[str, Any]]
    failed: list[dict[str, Any]] = Field(
        default_factory=list,
        description="versions on disk that are not served: modality, version, kind, reason, detail",
    )


class ErrorResponse(BaseModel):
    error: str = Field(examples=["validation"])
    detail: str
    request_id: str = Field(description="also in the X-Request-ID header; a 500 is logged under it")
    problems: list[dict[str, Any]] | None = Field(
        None, examples=[[{"segment": 0, "reason": "flat_line", "detail": "segment 0: flat line"}]]
    )


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "missing or unknown API key",
        403: "a key without the role this route needs, or admin routes not configured",
        404: "no such modality or version",
        408: "the body did not arrive in time",
        413: "payload over the size limit",
        422: "invalid signal or request (reasons listed per segment); non-finite model output",
        429: "too much in flight; retry after Retry-After seconds",
        500: "a bug: the body names only the request id",
        503: "backend unavailable or not ready",
    }.items()
}

REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": EmbedRequest.model_json_schema()},
            "application/x-npy": {
                "schema": {"type": "string", "format": "binary"},
                "description": (
                    "a .npy float32 array [segment, channel, sample]; modality and fs as query parameters"
                ),
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": "raw little-endian float32 with an X-Shape: n,channels,samples header",
            },
        },
    },
    "parameters": [
        {"name": "modality", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "fs", "in": "query", "required": False, "schema": {"type": "number"}},
        {"name": "model_version", "in": "query", "required": False, "schema": {"type": "integer"}},
        {"name": "quality", "in": "query", "required": False, "schema": {"type": "string"}},
    ],
}


def quality_rows(q: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"segment": i, "flags": f, "heart_rate_bpm": h, "sqi": s, "cached": c}
        for i, (f, h, s, c) in enumerate(
            zip(q["flags"], q["heart_rate_bpm"], q["sqi"], q["cached"], strict=True)
        )
    ]


def prediction(outputs: list[dict[str, Any]], row: np.ndarray) -> dict[str, dict[str, Any]]:
    return {
        o["target"]: {"value": round(float(v), 4), "units": o["units"], "kind": o["kind"]}
        for o, v in zip(outputs, row, strict=True)
    }
