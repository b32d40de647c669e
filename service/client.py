"""Python client for the gateway, sync and async (httpx). Sends binary .npy bodies by default.

from service.client import PulseClient
with PulseClient("http://127.0.0.1:8080", api_key="...") as c:
    emb = c.embed(segments, modality="ecg", fs=500)        # (n, 256) float32
    out = c.predict(segments, modality="ecg", fs=500)      # dict: predictions, aggregate, model

async with AsyncPulseClient(url) as c:
    emb = await c.embed(segments, modality="ppg", fs=64)
"""

from __future__ import annotations

import io
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
