"""Python client for the gateway, sync and async (httpx). Sends binary .npy bodies by default.

from service.client import PulseClient
with PulseClient("http://127.0.0.1:8080", api_key="...") as c:
    res = c.embed_recording("my_ecg.csv", modality="ecg")        # a file, any length >= 30 s
    res = c.embed_recording(x, modality="ppg", fs=100)           # or an array (channels, samples)
    res.embeddings, res.windows, res.aggregate                   # per window, with quality flags
    res = c.predict_recording("my_ecg.edf", modality="ecg")      # res.predictions per window
    emb = c.embed(segments, modality="ecg", fs=500)              # (n, 256) float32, NaN = unusable

async with AsyncPulseClient(url) as c:
    res = await c.embed_recording(x, modality="ppg", fs=64)

Outputs of predict (docs/api.md): `age` years, `bmi` kg/m2, `heart_rate` bpm (regressions);
`sex` the probability of male, `condition` the probability of the SYNTHETIC cohort's condition
(classifications). An output outside the range seen in its training data carries the flag
`out_of_range`; a window far from the probes' training embeddings `out_of_distribution`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

NPY = "application/x-npy"


class PulseError(RuntimeError):
    """The gateway refused a request; `.status` and `.body` say why (422 bodies list problems)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


def _npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x, dtype=np.float32))
    return buf.getvalue()


def _params(modality: str, fs: float, model_version: int | None, quality: str) -> dict[str, Any]:
    p: dict[str, Any] = {"modality": modality, "fs": fs, "quality": quality}
    if model_version is not None:
        p["model_version"] = model_version
    return p


def _request(
    segments: np.ndarray, modality: str, fs: float, model_version: int | None, quality: str, npy_out: bool
) -> dict[str, Any]:
    """Keyword arguments of one POST (binary .npy body), shared by the sync and async clients."""
    headers = {"Content-Type": NPY, "Accept": NPY} if npy_out else {"Content-Type": NPY}
    return {
        "content": _npy(segments),
        "params": _params(modality, fs, model_version, quality),
        "headers": headers,
    }


@dataclass
class RecordingResult:
    """Per-window results for the recordings of one call (the JSON answer, typed)."""

    model: dict[str, Any]
    window_s: float
    stride_s: float
    windows: list[dict[str, Any]]  # window, recording, start_s, usable, reasons, flags, heart_rate_bpm, sqi
    recordings: list[dict[str, Any]]  # duration_s, windows, used, dropped_tail_s
    windows_used: int
    embeddings: np.ndarray | None = None  # (windows, 256) float32, NaN rows for unusable windows
    aggregate: Any = None  # embed: the mean embedding (256,); predict: target -> output on it
    predictions: list[dict[str, Any] | None] | None = None  # predict: per window (None if unusable)

    @property
    def usable(self) -> np.ndarray:
        return np.array([w["usable"] for w in self.windows], dtype=bool)

    @classmethod
    def from_answer(cls, doc: dict[str, Any]) -> RecordingResult:
        res = cls(
            doc["model"],
            doc["window_s"],
            doc["stride_s"],
            doc["quality"],
            doc["recordings"],
            doc["windows_used"],
        )
        if "embeddings" in doc:
            res.embeddings = np.array(
                [e if e is not None else [np.nan] * 256 for e in doc["embeddings"]], dtype=np.float32
            ).reshape(len(doc["embeddings"]), -1)
            res.aggregate = np.asarray(doc["aggregate"], dtype=np.float32)
        else:
            res.predictions, res.aggregate = doc["predictions"], doc["aggregate"]
        return res


Source = str | Path | np.ndarray


def _recording_request(
    source: Source,
    modality: str,
    fs: float | None,
    channels: Sequence[int | str] | None,
    stride_s: float | None,
    model_version: int | None,
    quality: str,
) -> dict[str, Any]:
    """Keyword arguments of one POST: a file as a multipart upload, an array as a .npy body."""
    fields: dict[str, Any] = {"modality": modality, "quality": quality}
    for key, value in (("fs", fs), ("stride_s", stride_s), ("model_version", model_version)):
        if value is not None:
            fields[key] = value
    if channels:
        fields["channels"] = ",".join(str(c) for c in channels)
    if isinstance(source, np.ndarray):
        if fs is None:
            raise ValueError("an array needs its sampling rate: fs=...")
        x = source if source.ndim == 3 else source.reshape((1,) * (3 - source.ndim) + source.shape)
        return {"content": _npy(x), "params": fields, "headers": {"Content-Type": NPY}}
    path = Path(source)
    return {"files": {"file": (path.name, path.read_bytes())}, "data": {k: str(v) for k, v in fields.items()}}


def _check(r: httpx.Response) -> httpx.Response:
    if r.status_code >= 400:
        try:
            body: Any = r.json()
        except ValueError:
            body = r.text
        raise PulseError(r.status_code, body)
    return r


def _embeddings(r: httpx.Response) -> np.ndarray:
    return np.load(io.BytesIO(_check(r).content), allow_pickle=False)


class PulseClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def embed(
        self,
        segments: np.ndarray,
        modality: str,
        fs: float,
        model_version: int | None = None,
        quality: str = "basic",
    ) -> np.ndarray:
        r = self.http.post("/v1/embed", **_request(segments, modality, fs, model_version, quality, True))
        return _embeddings(r)

    def predict(
        self,
        segments: np.ndarray,
        modality: str,
        fs: float,
        model_version: int | None = None,
        quality: str = "basic",
    ) -> dict[str, Any]:
        r = self.http.post("/v1/predict", **_request(segments, modality, fs, model_version, quality, False))
        return dict(_check(r).json())

    def embed_recording(
        self,
        source: Source,
        modality: str,
        fs: float | None = None,
        channels: Sequence[int | str] | None = None,
        stride_s: float | None = None,
        model_version: int | None = None,
        quality: str = "basic",
    ) -> RecordingResult:
        """Per-window embeddings of a recording file (any format the gateway reads) or array."""
        req = _recording_request(source, modality, fs, channels, stride_s, model_version, quality)
        return RecordingResult.from_answer(_check(self.http.post("/v1/embed", **req)).json())

    def predict_recording(
        self,
        source: Source,
        modality: str,
        fs: float | None = None,
        channels: Sequence[int | str] | None = None,
        stride_s: float | None = None,
        model_version: int | None = None,
        quality: str = "basic",
    ) -> RecordingResult:
        """Per-window probe outputs (and on the mean embedding) of a recording file or array."""
        req = _recording_request(source, modality, fs, channels, stride_s, model_version, quality)
        return RecordingResult.from_answer(_check(self.http.post("/v1/predict", **req)).json())

    def models(self) -> dict[str, Any]:
        return dict(_check(self.http.get("/v1/models")).json())

    def ready(self) -> bool:
        return self.http.get("/readyz").status_code == 200

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> PulseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPulseClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout)

    async def embed(
        self,
        segments: np.ndarray,
        modality: str,
        fs: float,
        model_version: int | None = None,
        quality: str = "basic",
    ) -> np.ndarray:
        r = await self.http.post(
            "/v1/embed", **_request(segments, modality, fs, model_version, quality, True)
        )
        return _embeddings(r)

    async def predict(
        self,
        segments: np.ndarray,
        modality: str,
        fs: float,
        model_version: int | None = None,
        quality: str = "basic",
    ) -> dict[str, Any]:
        r = await self.http.post(
            "/v1/predict", **_request(segments, modality, fs, model_version, quality, False)
        )
        return dict(_check(r).json())

    async def embed_recording(
        self,
        source: Source,
        modality: str,
        fs: float | None = None,
        channels: Sequence[int | str] | None = None,
        stride_s: float | None = None,
        model_version: int | None = None,
        quality: str = "basic",
    ) -> RecordingResult:
        req = _recording_request(source, modality, fs, channels, stride_s, model_version, quality)
        return RecordingResult.from_answer(_check(await self.http.post("/v1/embed", **req)).json())

    async def predict_recording(
        self,
        source: Source,
        modality: str,
        fs: float | None = None,
        channels: Sequence[int | str] | None = None,
        stride_s: float | None = None,
        model_version: int | None = None,
        quality: str = "basic",
    ) -> RecordingResult:
        req = _recording_request(source, modality, fs, channels, stride_s, model_version, quality)
        return RecordingResult.from_answer(_check(await self.http.post("/v1/predict", **req)).json())

    async def models(self) -> dict[str, Any]:
        return dict(_check(await self.http.get("/v1/models")).json())

    async def ready(self) -> bool:
        return (await self.http.get("/readyz")).status_code == 200

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncPulseClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
