"""Request/response shapes of the API (OpenAPI with examples) and small response builders."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pulsefm.plausibility import OUT_OF_RANGE, Plausibility
from service.pipeline import Quality
from service.routes.docs import example_request
from service.windows import Windows


class EmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # as the gateway decodes it: an unknown field is a 422

    modality: str = Field(description='"ppg" (1-4 channels, 60 s windows) or "ecg" (1 lead, 30 s windows)')
    fs: float = Field(description="sampling rate of the samples sent, Hz (16-4096; resampled)")
    segments: list[list[list[float]]] = Field(
        description=(
            "[recording][channel][sample]: recordings of any length >= one window (PPG 60 s, ECG 30 s), "
            "cut into windows server-side; PPG takes 1-4 channels (input i of the encoder gets "
            "channel i mod k)"
        )
    )
    model_version: int | None = Field(None, description="pin a served version (default: the latest)")
    quality: str = Field("basic", description='"basic" (raw checks) or "full" (+ heart rate and SQI, slower)')
    stride_s: float | None = Field(None, description="seconds between window starts (default: one window)")
    channels: list[int] | None = Field(None, description="channel indices to use, in order (default: all)")


class ModelInfo(BaseModel):
    modality: str
    version: int
    preprocess_version: str
    encoder_sha256: str
    training_data: str


class WindowQuality(BaseModel):
    window: int = Field(description="index into embeddings / predictions")
    segment: int = Field(description="same as window (the name of the API's first version)")
    recording: int = Field(description="which recording of the request (index along its first axis)")
    start_s: float = Field(description="start of the window in its recording, seconds")
    usable: bool = Field(description="false: no embedding (null); `reasons` says why")
    reasons: list[str] = Field(
        description="why unusable: nonfinite, out_of_range, flat_line, clipping, non_finite_output"
    )
    flags: list[str] = Field(
        description="soft flags: implausible_heart_rate, low_sqi (quality=full), out_of_distribution"
    )
    heart_rate_bpm: float | None = None
    sqi: float | None = None
    cached: bool
    ood_score: float | None = Field(
        None,
        description=(
            "distance of the embedding from the probes' training embeddings (about 1 = typical); "
            "above the version's threshold (/v1/models: probes.plausibility) the window is flagged "
            "out_of_distribution"
        ),
    )


class RecordingSummary(BaseModel):
    recording: int
    duration_s: float
    windows: int
    used: int = Field(description="usable windows")
    dropped_tail_s: float = Field(description="seconds after the last whole window, not embedded")


class EmbedResponse(BaseModel):
    model: ModelInfo
    window_s: float = Field(description="window length: PPG 60 s, ECG 30 s")
    stride_s: float
    embeddings: list[list[float] | None] = Field(description="one 256-d vector per window (null if unusable)")
    quality: list[WindowQuality]
    recordings: list[RecordingSummary]
    windows_used: int
    aggregate: list[float] = Field(description="mean embedding of the usable windows")


class Output(BaseModel):
    value: float
    units: str
    kind: str = Field(description="regression, or classification (value is a probability: sex = P(male))")
    range: list[float] | None = Field(
        None, description="regressions: the range of the probe's training labels"
    )
    flags: list[str] = Field(description="out_of_range: the value lies outside `range`")


class PredictResponse(BaseModel):
    model: ModelInfo
    window_s: float
    stride_s: float
    predictions: list[dict[str, Output] | None] = Field(
        description="per window: target -> output (null if unusable)"
    )
    aggregate: dict[str, Output] = Field(description="the probes on the mean embedding of the usable windows")
    quality: list[WindowQuality]
    recordings: list[RecordingSummary]
    windows_used: int


class ModelsResponse(BaseModel):
    backend: str
    models: list[dict[str, Any]]
    rollouts: dict[str, Any] = Field(
        default_factory=dict,
        description="per modality: current version, canary / shadow candidate and fraction, history",
    )
    retiring: list[dict[str, Any]] = Field(
        default_factory=list,
        description="versions that left the serving policy: answered when pinned until `sunset` (Unix s), "
        "then 410",
    )
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
        410: "a pinned version past its retirement grace period (the served versions are named)",
        408: "request head or body not received in time (header_timeout, body_timeout); then a close",
        413: "payload over the size limit",
        415: "a compressed body (a Content-Encoding other than identity): send it uncompressed",
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
            "application/json": {
                "schema": EmbedRequest.model_json_schema(),
                "example": example_request(),  # 30 s of real ECG (service/routes/docs.py)
            },
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
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "modality"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": (
                                "one recording: CSV/TSV/TXT, EDF/BDF, WFDB (.zip of .hea + .dat), HDF5, "
                                "Parquet, .npy/.npz, Apple Health ECG CSV, Empatica E4 CSV, OpenSignals "
                                "text/HDF5, Polar Sensor Logger text"
                            ),
                        },
                        "modality": {"type": "string", "enum": ["ppg", "ecg"]},
                        "fs": {"type": "number", "description": "Hz, where the file does not say"},
                        "channels": {"type": "string", "description": "names or indices, comma-separated"},
                        "stride_s": {"type": "number"},
                        "dataset": {"type": "string", "description": "HDF5 / .npz array to read"},
                        "model_version": {"type": "integer"},
                        "quality": {"type": "string", "enum": ["basic", "full"]},
                    },
                },
                "description": "a recording file upload (curl -F file=@rec.csv -F modality=ecg)",
            },
        },
    },
    "parameters": [
        {"name": "modality", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "fs", "in": "query", "required": False, "schema": {"type": "number"}},
        {"name": "model_version", "in": "query", "required": False, "schema": {"type": "integer"}},
        {"name": "quality", "in": "query", "required": False, "schema": {"type": "string"}},
        {"name": "stride_s", "in": "query", "required": False, "schema": {"type": "number"}},
        {
            "name": "channels",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "comma-separated channel indices (binary bodies) or names (uploaded files)",
        },
    ],
}


def quality_rows(win: Windows, q: Quality) -> list[dict[str, Any]]:
    rows = []
    for w in range(len(win)):
        reasons = [p.reason for p in win.problems.get(w, [])]
        rows.append(
            {
                "window": w,
                "segment": w,
                "recording": win.recording(w),
                "start_s": round(win.start_s(w), 3),
                "usable": not reasons,
                "reasons": reasons,
                "flags": q.flags[w],
                "heart_rate_bpm": q.heart_rate_bpm[w],
                "sqi": q.sqi[w],
                "cached": q.cached[w],
                "ood_score": q.ood_score[w],
            }
        )
    return rows


def recordings(win: Windows) -> list[dict[str, Any]]:
    k = win.per_recording
    return [
        {
            "recording": r,
            "duration_s": round(win.x.shape[-1] / win.fs, 3),
            "windows": k,
            "used": sum(1 for w in range(r * k, (r + 1) * k) if w not in win.problems),
            "dropped_tail_s": round(win.dropped_tail_s, 3),
        }
        for r in range(win.x.shape[0])
    ]


def prediction(
    outputs: list[dict[str, Any]], row: np.ndarray, plaus: Plausibility | None = None
) -> dict[str, dict[str, Any]]:
    ranges = plaus.ranges if plaus else {}
    out = {}
    for o, v in zip(outputs, row, strict=True):
        lo_hi = ranges.get(o["target"])
        value = round(float(v), 4)
        flags = [OUT_OF_RANGE] if lo_hi and not lo_hi[0] <= value <= lo_hi[1] else []
        out[o["target"]] = {
            "value": value,
            "units": o["units"],
            "kind": o["kind"],
            "range": list(lo_hi) if lo_hi else None,
            "flags": flags,
        }
    return out
