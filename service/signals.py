"""Request bodies -> validated raw segments -> model-ready segments, with the training code's preprocessing.

Bodies: JSON `{"modality", "fs", "segments": [[[...], ...], ...]}` or binary (`application/x-npy`,
or `application/octet-stream` raw float32 with an `X-Shape: n,channels,samples` header) with
modality and fs as query parameters. Every problem is collected into one 422 answer that names
the segment and the reason; nothing is silently dropped or repaired.

Hard failures (422): wrong shape / channels, too short / too long for the model's window,
NaN / inf, flat line, clipping, wrong dtype, too many segments, sampling rate out of range.
Soft flags (returned with the result): implausible heart rate, low signal quality
(`quality=full` only: they need beat detection, ~10 ms per segment).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pulsefm.preprocess import PreprocessSpec, filter_and_resample, spec_for, zscore
from pulsefm.quality import check_segment, raw_checks
from pulsefm.records import Modality

JSON, NPY, RAW = "application/json", "application/x-npy", "application/octet-stream"


@dataclass
class Problem:
    reason: str  # machine-readable: shape, channels, too_short, too_long, nonfinite, flat_line, ...
    detail: str
    segment: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"segment": self.segment, "reason": self.reason, "detail": self.detail}


class ValidationFailed(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.detail for p in problems))
        self.problems = problems


class PayloadTooLarge(ValueError):
    pass


@dataclass
class Batch:
    """Validated raw segments of one request."""

    modality: str
    fs: float
    x: np.ndarray  # (n, channels, samples) float32, as received (channels possibly repeated)
    model_version: int | None = None
    quality: str = "basic"
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    max_segments: int = 64
    min_fs: float = 16.0
    max_fs: float = 4096.0
    duration_tolerance: float = 0.02


def _fail(reason: str, detail: str, segment: int | None = None) -> ValidationFailed:
    return ValidationFailed([Problem(reason, detail, segment)])


def parse_modality(value: Any) -> str:
    try:
        return str(Modality(str(value).lower()))
    except ValueError:
        raise _fail(
            "modality", f"modality must be one of {[str(m) for m in Modality]}, got {value!r}"
        ) from None


def parse_fs(value: Any, limits: Limits) -> float:
    try:
        fs = float(value)
    except (TypeError, ValueError):
        raise _fail("fs", f"fs (sampling rate, Hz) must be a number, got {value!r}") from None
    if not np.isfinite(fs) or not limits.min_fs <= fs <= limits.max_fs:
        raise _fail("fs", f"fs {fs:g} Hz outside the supported range [{limits.min_fs:g}, {limits.max_fs:g}]")
    return fs


def decode_json(body: bytes) -> tuple[dict[str, Any], np.ndarray]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail("json", f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or "segments" not in doc:
        raise _fail("json", 'body must be an object with "modality", "fs" and "segments"')
    try:
        arr = np.asarray(doc["segments"], dtype=np.float64)
    except (TypeError, ValueError):
        raise _fail(
            "dtype", "segments must be a rectangular array of numbers: [segment][channel][sample]"
        ) from None
    return doc, arr


def decode_binary(body: bytes, content_type: str, shape_header: str | None) -> np.ndarray:
    if content_type == NPY:
        try:
            arr = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise _fail("npy", f"body is not a .npy array: {exc}") from None
    else:
        if not shape_header:
            raise _fail("shape", "raw float32 bodies need an X-Shape header: n,channels,samples")
        try:
            shape = tuple(int(s) for s in shape_header.split(","))
        except ValueError:
            raise _fail("shape", f"bad X-Shape {shape_header!r}; expected n,channels,samples") from None
        if len(body) != 4 * int(np.prod(shape)):
            raise _fail(
                "shape", f"X-Shape {shape} needs {4 * int(np.prod(shape))} bytes, body has {len(body)}"
            )
        arr = np.frombuffer(body, dtype="<f4").reshape(shape)
    if arr.dtype.kind != "f":
        raise _fail("dtype", f"samples must be float32 or float64, got {arr.dtype}")
    return arr


def check_array(arr: np.ndarray, modality: str, fs: float, limits: Limits) -> np.ndarray:
    """Shape, channel, length and raw-signal checks; returns (n, channels, samples) float32."""
    spec = spec_for(modality)
    if arr.ndim == 1:
        arr = arr[None, None, :]  # one single-channel segment
    elif arr.ndim == 2:
        arr = arr[None]  # one segment (channels, samples)
    if arr.ndim != 3 or 0 in arr.shape:
        raise _fail("shape", f"segments must be [segment][channel][sample]; got shape {list(arr.shape)}")
    n, channels, samples = arr.shape
    if n > limits.max_segments:
        raise _fail("too_many_segments", f"{n} segments in one request; the limit is {limits.max_segments}")
    if channels not in (spec.channels, 1):
        raise _fail(
            "channels", f"{modality} takes {spec.channels} channel(s) (or 1, repeated); got {channels}"
        )
    want = spec.duration_s * fs
    tol = limits.duration_tolerance
    if samples < want * (1 - tol):
        raise _fail(
            "too_short",
            f"{samples} samples at {fs:g} Hz = {samples / fs:.2f} s; {modality} needs {spec.duration_s:g} s",
        )
    if samples > want * (1 + tol):
        raise _fail(
            "too_long",
            f"{samples} samples at {fs:g} Hz = {samples / fs:.2f} s; {modality} takes {spec.duration_s:g} s "
            "segments (split longer recordings)",
        )
    problems = []
    for i, seg in enumerate(arr):
        for reason in raw_checks(seg, fs):
            problems.append(Problem(reason, f"segment {i}: {reason.replace('_', ' ')}", i))
    if problems:
        raise ValidationFailed(problems)
    return np.ascontiguousarray(arr, dtype=np.float32)


def fit_length(x: np.ndarray, window: int) -> np.ndarray:
    """Crop or edge-pad the last axis to `window` (the duration check bounds the change to a few %)."""
    if x.shape[-1] >= window:
        return x[..., :window]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, window - x.shape[-1])], mode="edge")


@dataclass
class Prepared:
    data: np.ndarray  # (n, channels, window) float32, what the encoder takes
    flags: list[list[str]]
    heart_rate_bpm: list[float | None]
    sqi: list[float | None]


def preprocess(x: np.ndarray, fs: float, spec: PreprocessSpec, full_quality: bool = False) -> Prepared:
    """The training pipeline's filter/resample/z-score (+ heart rate and SQI if asked).

    The same functions as `pulsefm.pipeline`, applied to the whole (n, C, T) batch at once (scipy
    filters along the last axis), which costs far fewer Python calls than a loop per segment.
    """
    x64 = x.astype(np.float64)
    if x64.shape[1] != spec.channels:  # a single channel, repeated (validated before)
        x64 = np.repeat(x64, spec.channels, axis=1)
    filtered = fit_length(filter_and_resample(x64, fs, spec), spec.window)
    flags: list[list[str]] = [[] for _ in range(len(x))]
    hrs: list[float | None] = [None] * len(x)
    sqis: list[float | None] = [None] * len(x)
    if full_quality:
        for i in range(len(x)):
            q = check_segment(x64[i], fs, filtered[i], spec.fs, spec.modality)
            flags[i] = list(q.reasons)
            hrs[i] = None if not np.isfinite(q.heart_rate_bpm) else round(float(q.heart_rate_bpm), 2)
            sqis[i] = None if not np.isfinite(q.sqi) else round(float(q.sqi), 3)
    out = zscore(filtered) if spec.zscore else filtered
    return Prepared(out.astype(np.float32), flags, hrs, sqis)
