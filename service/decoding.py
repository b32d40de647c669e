"""Request bodies -> validated raw segments, every size checked before anything is allocated.

Bodies: JSON `{"modality", "fs", "segments": [[[...], ...], ...]}` or binary (`application/x-npy`,
or `application/octet-stream` raw little-endian float32 with an `X-Shape: n,channels,samples`
header) with modality, fs, model_version and quality as query parameters.

Rules (each one a class of hostile input, tested in tests/test_hardening.py):
- JSON is decoded by msgspec against a typed schema: `fs` must be a JSON number, `model_version`
  a JSON integer, samples numbers (or null = missing, reported as non-finite); booleans, strings
  and numbers beyond float64/int64 are refused; nesting deeper than the schema is refused.
- .npy: the header's dtype (float32/float64 only) and shape x itemsize are checked against the
  body's length before any array exists; raw: X-Shape's product against the body's length.
- Every signal check runs on the float32 array the encoder will see: values beyond float32's
  range are `out_of_range`, float64 subnormals that cast to zero are a `flat_line`.
Every problem becomes one 422 answer naming the segment and the reason; nothing is repaired.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import numpy as np

from pulsefm import npyformat
from pulsefm.preprocess import PreprocessSpec, spec_for
from pulsefm.records import Modality
from service.errors import Problem, ValidationFailed
from service.textnumbers import decimal, integer, integers
from service.windows import OUT_OF_RANGE, Windows, cut, parse_stride

JSON, NPY, RAW = "application/json", "application/x-npy", "application/octet-stream"
MULTIPART = "multipart/form-data"
MAX_VERSION = 2**31 - 1


@dataclass(frozen=True)
class Limits:
    max_windows: int = 4096
    min_fs: float = 16.0
    max_fs: float = 4096.0
    duration_tolerance: float = 0.02
    max_decoded_bytes: int = 512 * 1024 * 1024  # an uploaded file unpacked


@dataclass
class Batch:
    """One request's recordings, cut into checked windows."""

    modality: str
    fs: float
    windows: Windows
    model_version: int | None = None
    quality: str = "basic"
    # window -> sha256 of its raw samples (service/cache.py segment_digest), made with the parse in
    # the CPU pool when the cache is on
    digests: dict[int, str] = field(default_factory=dict)


def fail(reason: str, detail: str, segment: int | None = None) -> ValidationFailed:
    return ValidationFailed([Problem(reason, detail, segment)])


# ------------------------------------------------------------------------------ parameters
def parse_modality(value: Any) -> str:
    if isinstance(value, str):
        try:
            return str(Modality(value.lower()))
        except ValueError:
            pass
    raise fail("modality", f"modality must be one of {[str(m) for m in Modality]}, got {value!r:.40}")


def fs_from_text(text: str) -> float:
    """A sampling rate written as text (a query string, a form field): an ASCII decimal number."""
    fs = decimal(text)
    if fs is None:
        raise fail("fs", f"fs (sampling rate, Hz) must be a decimal number, got {text!r:.40}")
    return fs


def parse_fs(value: Any, limits: Limits, spec: PreprocessSpec) -> float:
    """A sampling rate from JSON (already a float) or a query string; finite and in range."""
    if isinstance(value, str):
        fs = fs_from_text(value)
    elif isinstance(value, float):
        fs = value
    else:
        raise fail("fs", f"fs (sampling rate, Hz) must be a number, got {value!r:.40}")
    lo, hi = max(limits.min_fs, spec.min_fs), min(limits.max_fs, spec.max_fs)
    if not math.isfinite(fs) or not lo <= fs <= hi:
        raise fail("fs", f"fs {fs:g} Hz outside the supported range [{lo:g}, {hi:g}]")
    return fs


# the parameters of a request, in the query of a .npy / raw body, or in a JSON body or a form
PARAMETERS = ("modality", "fs", "stride_s", "channels", "model_version", "quality")


def parameters(
    given: dict[str, Any], query: dict[str, str], place: str, known: tuple[str, ...] = PARAMETERS
) -> dict[str, Any]:
    """The request's parameters: `given` in the body (`place`: "JSON body", "form") and those of
    the query, each named once and every name known. A typo (`stirde_s`) or a value given twice
    was silently not the one used."""
    unknown = [name for name in query if name not in known]
    if unknown:
        raise fail(
            "parameter", f"unknown query parameter {unknown[0]!r:.40}; the parameters are {', '.join(known)}"
        )
    twice = [name for name in query if name in given]
    if twice:
        raise fail("parameter", f"{twice[0]} is given in both the query and the {place}: give it once")
    return {**given, **query}


def parse_version(value: Any) -> int | None:
    """None (the latest), or a version number: a JSON integer, or digits in a query string."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        number = integer(value)
        value = value if number is None else number
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_VERSION:
        return value
    raise fail("model_version", f"model_version must be an integer in [0, {MAX_VERSION}], got {value!r:.40}")


def parse_quality(value: Any) -> str:
    if value in ("basic", "full"):
        return str(value)
    raise fail("quality", f"quality must be 'basic' or 'full', got {value!r:.40}")


# ------------------------------------------------------------------------------ JSON
class _JsonBody(msgspec.Struct, forbid_unknown_fields=True):
    segments: msgspec.Raw
    modality: str | None = None
    fs: float | None = None
    model_version: int | None = None
    quality: Literal["basic", "full"] | None = None
    stride_s: float | None = None
    channels: list[int] | None = None


_BODY = msgspec.json.Decoder(_JsonBody)
# segments by nesting depth: [sample], [channel][sample], [segment][channel][sample]; null = missing
_SEGMENTS: dict[int, msgspec.json.Decoder[Any]] = {
    1: msgspec.json.Decoder(list[float | None]),
    2: msgspec.json.Decoder(list[list[float | None]]),
    3: msgspec.json.Decoder(list[list[list[float | None]]]),
}
_LEADING = re.compile(rb"\s*(?:\[\s*){0,4}")
_AT = re.compile(r"at `\$\.?([A-Za-z_]*)")
_UNKNOWN = re.compile(r"^Object contains unknown field `(.*)`$", re.DOTALL)


def _json_problem(exc: Exception) -> ValidationFailed:
    msg = str(exc)
    where = _AT.search(msg)
    name = where.group(1) if where else ""
    reason = name if name in PARAMETERS else "json"
    unknown = _UNKNOWN.search(msg)
    if unknown:
        fields = ", ".join(("segments", *PARAMETERS))
        return fail(
            "parameter", f"unknown field {unknown.group(1)!r:.40} in the JSON body; the fields are {fields}"
        )
    return fail(reason, f"invalid request body: {msg}")


def decode_json(body: bytes) -> tuple[_JsonBody, np.ndarray]:
    try:
        doc = _BODY.decode(body)
    except RecursionError:
        raise fail("json", "body is nested too deeply") from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _json_problem(exc) from None
    raw = bytes(doc.segments)
    lead = _LEADING.match(raw)
    depth = lead.group(0).count(b"[") if lead else 0
    decoder = _SEGMENTS.get(depth)
    if decoder is None:
        raise fail("shape", "segments must be [segment][channel][sample] (or [channel][sample], [sample])")
    try:
        nested = decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
        detail = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
        reason = OUT_OF_RANGE if "out of range" in detail else "dtype"
        raise fail(reason, f"segments must be a rectangular array of numbers: {detail}") from None
    try:
        arr = np.asarray(nested, dtype=np.float64)  # null -> NaN (reported as non-finite)
    except ValueError:
        raise fail(
            "shape", "segments must be rectangular: every channel of every segment the same length"
        ) from None
    return doc, arr


# ------------------------------------------------------------------------------ binary
def _check_float_dtype(dtype: np.dtype[Any]) -> None:
    if dtype.kind != "f" or dtype.itemsize not in (4, 8) or dtype.fields is not None or dtype.shape:
        raise fail("dtype", f"samples must be float32 or float64, got {dtype}")


def _check_shape(shape: tuple[int, ...], source: str) -> None:
    """[sample], [channel][sample] or [segment][channel][sample], no empty axis (else numpy's
    reshape of an empty buffer to e.g. (0, 2**40, 2**40) fails on its own)."""
    if not 1 <= len(shape) <= 3 or min(shape) < 1:
        raise fail(
            "shape", f"{source} shape {tuple(shape)}: need 1-3 axes (segment, channel, sample), none empty"
        )


def read_npy_header(f: Any, reason: str = "npy", what: str = "body") -> npyformat.NpyHeader:
    """A .npy header, read without allocating anything; any parse failure is a 422 (`reason`)
    naming `what`."""
    try:
        return npyformat.read_header(f)  # not numpy's: its ast-based parser is not thread-safe
    except ValueError as exc:  # the header is client text: any way it is unreadable is a 422
        why = "dtype" if isinstance(exc, npyformat.UnsupportedDtype) and reason == "npy" else reason
        raise fail(why, f"{what} is not a .npy array: {str(exc)[:200]}") from None


def decode_npy(body: bytes) -> np.ndarray:
    """A .npy body -> array view, its header checked against the body before anything is allocated."""
    header = read_npy_header(io.BytesIO(body))
    _check_float_dtype(header.dtype)
    _check_shape(header.shape, ".npy header")
    try:
        return npyformat.view(body, header, "the body")
    except ValueError as exc:  # the header claims other bytes than the body holds
        raise fail("npy", f".npy {exc}") from None


_SHAPE = re.compile(r" *\d{1,10} *(?:, *\d{1,10} *){0,2}", re.ASCII)


def decode_raw(body: bytes, shape_header: str | None) -> np.ndarray:
    if not shape_header:
        raise fail("shape", "raw float32 bodies need an X-Shape header: n,channels,samples")
    if not _SHAPE.fullmatch(shape_header):
        raise fail("shape", f"bad X-Shape {shape_header[:60]!r}; expected n,channels,samples (digits)")
    shape = tuple(int(s) for s in shape_header.split(","))
    _check_shape(shape, "X-Shape")
    need = 4 * math.prod(shape)
    if need != len(body):
        raise fail("shape", f"X-Shape {shape} needs {need} bytes; the body has {len(body)}")
    return np.frombuffer(body, dtype="<f4").reshape(shape)


# ------------------------------------------------------------------------------ the signal
def parse_channels(value: Any, available: int) -> list[int] | None:
    """Channel indices to keep, in order: a JSON list of integers or "0,2" in a query string."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = integers(value, most=16) or value
    if (
        isinstance(value, list)
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < available for v in value)
        and len(set(value)) == len(value)
    ):
        return list(value)
    raise fail("channels", f"channels must be distinct indices in [0, {available}), got {value!r:.60}")


def to_windows(
    arr: np.ndarray, modality: str, fs: float, limits: Limits, stride: Any = None, channels: Any = None
) -> Windows:
    """Shape, channel and length checks, the float32 cast, then windows checked one by one."""
    spec = spec_for(modality)
    if arr.ndim == 1:
        arr = arr[None, None, :]  # one single-channel recording
    elif arr.ndim == 2:
        arr = arr[None]  # one recording (channels, samples)
    if arr.ndim != 3 or 0 in arr.shape:
        raise fail("shape", f"segments must be [recording][channel][sample]; got shape {list(arr.shape)}")
    picked = parse_channels(channels, arr.shape[1])
    if picked is not None:
        arr = arr[:, picked]
    if not 1 <= arr.shape[1] <= spec.channels:
        mapped = "" if spec.channels == 1 else f" (onto the encoder's {spec.channels} inputs, docs/api.md)"
        takes = spec.channels_text + mapped
        raise fail(
            "channels",
            f"{modality} takes {takes}; got {arr.shape[1]}: pick with channels= (0-based, e.g. channels=0)",
        )
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = np.ascontiguousarray(arr, dtype=np.float32)  # what the encoder's preprocessing gets
    return cut(arr, x32, fs, spec, parse_stride(stride, spec), limits.duration_tolerance, limits.max_windows)


def parse_batch(
    body: bytes, content_type: str, shape: str | None, query: dict[str, str], limits: Limits
) -> Batch:
    """Decode + validate one request body (JSON, .npy, raw float32 or a multipart file upload) into
    checked windows. `content_type` is the header as sent (multipart needs its boundary)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in (NPY, RAW):
        arr = decode_npy(body) if ctype == NPY else decode_raw(body, shape)
        return from_array(arr, parameters({}, query, "body"), limits)
    if ctype == MULTIPART:
        from service.uploads import FIELDS, parse_form, read_upload

        up = parse_form(body, content_type)
        up.fields = parameters(up.fields, query, "form", FIELDS)
        modality = parse_modality(up.fields.get("modality"))
        signal, fs = read_upload(up, spec_for(modality), limits.max_decoded_bytes)
        fields = {k: v for k, v in up.fields.items() if k not in ("fs", "channels")}
        return from_array(signal, fields | {"fs": repr(fs)}, limits)
    if ctype == JSON:
        doc, arr = decode_json(body)
        given = {name: value for name in PARAMETERS if (value := getattr(doc, name)) is not None}
        return from_array(arr, parameters(given, query, "JSON body"), limits)
    raise fail(
        "content_type", f"unsupported content type {ctype[:60]!r}; use {JSON}, {NPY}, {RAW} or {MULTIPART}"
    )


def from_array(arr: np.ndarray, query: dict[str, Any], limits: Limits) -> Batch:
    """A decoded array plus its parameters (from the query, a form or a JSON body) -> a Batch."""
    modality = parse_modality(query.get("modality"))
    fs = parse_fs(query.get("fs"), limits, spec_for(modality))
    windows = to_windows(arr, modality, fs, limits, query.get("stride_s"), query.get("channels"))
    version = parse_version(query.get("model_version"))
    return Batch(modality, fs, windows, version, parse_quality(query.get("quality", "basic")))
