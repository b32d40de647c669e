"""Embedding cache: Redis when configured, else an in-process LRU. Values are float32 bytes.

Key = model name + version + preprocessing version + encoder checksum + sha256 of the canonical
input (sampling rate, shape and the raw float32 samples as received). A Redis failure never
fails a request: the call is treated as a miss (or a skipped write) and counted. Each Redis call
has a hard time budget; after `breaker_failures` failures in a row the cache is bypassed for
`breaker_cooldown_s` (a circuit breaker: a hung Redis costs a few budgets, not every request),
then one call tries it again. Values read back are validated by the pipeline (length, finite).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from service.metrics import CACHE_BREAKER_OPEN, CACHE_BYPASSED, CACHE_ERRORS, CACHE_HITS, CACHE_MISSES


def segment_digest(fs: float, x: np.ndarray) -> str:
    """sha256 of one raw segment (C, T) at `fs`: the input half of its cache key. hashlib lets go of
    the GIL while it hashes a segment, and the thread that asks for the GIL back then waits behind
    the CPU threads: digests are made in the CPU pool (service/pipeline.py), not on the event loop."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    h = hashlib.sha256()
    h.update(f"{fs:.6f}|{x.shape}|".encode())
    h.update(x.tobytes())
    return h.hexdigest()


def key_for(model: str, version: int, preprocess_version: str, encoder_sha: str, digest: str) -> str:
    return f"pulsefm:emb:{model}:v{version}:{preprocess_version}:{encoder_sha[:12]}:{digest}"


def cache_key(
    model: str, version: int, preprocess_version: str, encoder_sha: str, fs: float, x: np.ndarray
) -> str:
    """One raw segment (C, T) at `fs` -> its cache key."""
    return key_for(model, version, preprocess_version, encoder_sha, segment_digest(fs, x))


class Cache(Protocol):
    name: str
    enabled: bool  # False: no lookup, no key hashing, no write (PULSEFM_LRU_ENTRIES=0)

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
        self.enabled = entries > 0
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


class Breaker:
    """Closed -> (n failures in a row) open for `cooldown_s` -> half-open: one trial call decides."""

    def __init__(self, label: str, failures: int = 3, cooldown_s: float = 5.0) -> None:
        self.label, self.failures, self.cooldown_s = label, failures, cooldown_s
        self.in_a_row = 0
        self.open_until = 0.0
        self.trial = False

    def allow(self) -> bool:
        if self.in_a_row < self.failures:
            return True
        if time.monotonic() >= self.open_until and not self.trial:
            self.trial = True  # half-open: let this one call through
            return True
        return False

    def success(self) -> None:
        self.in_a_row, self.trial = 0, False
        CACHE_BREAKER_OPEN.labels(self.label).set(0)

    def failure(self) -> None:
        self.in_a_row += 1
        self.trial = False
        if self.in_a_row >= self.failures:
            self.open_until = time.monotonic() + self.cooldown_s
            CACHE_BREAKER_OPEN.labels(self.label).set(1)


class RedisCache:
    """redis.asyncio with a hard time budget per call and a circuit breaker; errors degrade to misses."""

    name = "redis"
    enabled = True

    def __init__(
        self,
        url: str,
        ttl_s: int,
        timeout_s: float = 0.1,
        breaker_failures: int = 3,
        breaker_cooldown_s: float = 5.0,
    ) -> None:
        import redis.asyncio as redis

        self.ttl_s, self.timeout_s = ttl_s, timeout_s
        self.breaker = Breaker(self.name, breaker_failures, breaker_cooldown_s)
        self.client = redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry_on_timeout=False
        )

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not self.breaker.allow():
            CACHE_BYPASSED.labels(self.name, "get").inc()
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self.timeout_s):
                values = await self.client.mget(list(keys))
        except Exception:  # connection refused, timeout, server gone: serve without the cache
            CACHE_ERRORS.labels(self.name, "get").inc()
            self.breaker.failure()
            return [None] * len(keys)
        self.breaker.success()
        out: list[bytes | None] = [v if isinstance(v, bytes) else None for v in values]
        _count(out, self.name)
        return out

    async def set_many(self, items: dict[str, bytes]) -> None:
        if not items:
            return
        if not self.breaker.allow():
            CACHE_BYPASSED.labels(self.name, "set").inc()
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.client.pipeline(transaction=False) as pipe:
                    for k, v in items.items():
                        pipe.set(k, v, ex=self.ttl_s)
                    await pipe.execute()
        except Exception:
            CACHE_ERRORS.labels(self.name, "set").inc()
            self.breaker.failure()
            return
        self.breaker.success()

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
