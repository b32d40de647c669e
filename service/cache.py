"""Embedding cache: Redis when configured, else an in-process LRU. Values are float32 bytes.

Key = model name + version + preprocessing version + encoder checksum + sha256 of the canonical
input (sampling rate, shape and the raw float32 samples as received). A Redis failure never
fails a request: the call is treated as a miss (or a skipped write) and counted.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from service.metrics import CACHE_ERRORS, CACHE_HITS, CACHE_MISSES


def cache_key(
    model: str, version: int, preprocess_version: str, encoder_sha: str, fs: float, x: np.ndarray
) -> str:
    """One raw segment (C, T) at `fs` -> its cache key."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    h = hashlib.sha256()
    h.update(f"{fs:.6f}|{x.shape}|".encode())
    h.update(x.tobytes())
    return f"pulsefm:emb:{model}:v{version}:{preprocess_version}:{encoder_sha[:12]}:{h.hexdigest()}"


class Cache(Protocol):
    name: str

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def set_many(self, items: dict[str, bytes]) -> None: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


def _count(hits: list[bytes | None], backend: str) -> None:
    n_hit = sum(v is not None for v in hits)
    CACHE_HITS.labels(backend).inc(n_hit)
    CACHE_MISSES.labels(backend).inc(len(hits) - n_hit)


class LRUCache:
    name = "lru"

    def __init__(self, entries: int = 10_000) -> None:
        self.entries = entries
        self.data: OrderedDict[str, bytes] = OrderedDict()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for k in keys:
            v = self.data.get(k)
            if v is not None:
                self.data.move_to_end(k)
            out.append(v)
        _count(out, self.name)
        return out

    async def set_many(self, items: dict[str, bytes]) -> None:
        for k, v in items.items():
            self.data[k] = v
            self.data.move_to_end(k)
        while len(self.data) > self.entries:
            self.data.popitem(last=False)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self.data.clear()


class RedisCache:
    """redis.asyncio with short timeouts; errors degrade to misses and are counted."""

    name = "redis"

    def __init__(self, url: str, ttl_s: int, timeout_s: float = 0.25) -> None:
        import redis.asyncio as redis

        self.ttl_s = ttl_s
        self.client = redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        try:
            values = await self.client.mget(list(keys))
        except Exception:  # connection refused, timeout, server gone: serve without the cache
            CACHE_ERRORS.labels(self.name, "get").inc()
            return [None] * len(keys)
        out: list[bytes | None] = [v if isinstance(v, bytes) else None for v in values]
        _count(out, self.name)
        return out

    async def set_many(self, items: dict[str, bytes]) -> None:
        if not items:
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for k, v in items.items():
                    pipe.set(k, v, ex=self.ttl_s)
                await pipe.execute()
        except Exception:
            CACHE_ERRORS.labels(self.name, "set").inc()

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.aclose()


def encode(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype=np.float32).tobytes()


def decode(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.float32)
