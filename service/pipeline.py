"""The request pipeline of /v1/embed and /v1/predict, one stage per method, in the order they run:

    validate -> admit -> resolve -> cache lookup -> preprocess -> batch + backend -> finite check
    -> cache write -> (predict) probes

Admission by request count and body bytes happened before the body was read (service/asgi.py);
`admit` here is the second bound, by segments, once their number is known. CPU stages run in the
gateway's own bounded pool, never on the event loop. A non-finite embedding or probe output is
never returned or cached: it is a 422 (`non_finite_output`) naming the segments.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from pulsefm import contract as C
from service.cache import cache_key, decode, encode
from service.decoding import Batch, Limits, parse_batch
from service.errors import NonFiniteOutput, NotReady, Problem, UnknownModel, ValidationFailed
from service.metrics import CACHE_ERRORS, SEGMENTS, STAGE_SECONDS
from service.registry import ModelVersion
from service.signals import Prepared, preprocess
from service.state import State

EMBEDDING_BYTES = 4 * C.EMBED_DIM


@dataclass
class Body:
    data: bytes
    content_type: str
    shape: str | None
    query: dict[str, str]


@dataclass
class Result:
    model: ModelVersion
    embeddings: np.ndarray  # (n, 256) float32
    quality: dict[str, Any]
    predictions: np.ndarray | None = None  # (n + 1, K): per segment, then the mean embedding's


class Pipeline:
    def __init__(self, state: State, endpoint: str) -> None:
        self.state, self.endpoint = state, endpoint
        s = state.settings
        self.limits = Limits(s.max_segments, s.min_fs, s.max_fs, s.duration_tolerance)

    async def run(self, body: Body, with_probes: bool = False) -> Result:
        batch = await self.validate(body)
        with self.state.admit(len(batch.x)):
            mv = self.resolve(batch)
            keys, emb, hit = await self.lookup(mv, batch)
            quality = await self.embed_misses(mv, batch, keys, emb, hit)
            predictions = await self.probes(mv, emb) if with_probes else None
        return Result(mv, emb, quality, predictions)

    async def _cpu(self, stage: str, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = await asyncio.get_running_loop().run_in_executor(self.state.cpu, partial(fn, *args))
        STAGE_SECONDS.labels(stage, self.endpoint).observe(time.perf_counter() - t0)
        return out

    async def validate(self, body: Body) -> Batch:
        batch: Batch = await self._cpu(
            "validation", parse_batch, body.data, body.content_type, body.shape, body.query, self.limits
        )
        return batch

    def resolve(self, batch: Batch) -> ModelVersion:
        if not self.state.ready:
            raise NotReady("models are not loaded yet (backend unreachable?); see /readyz")
        mv = self.state.registry.resolve(batch.modality, batch.model_version)
        SEGMENTS.labels(self.endpoint, mv.modality).inc(len(batch.x))
        return mv

    async def lookup(self, mv: ModelVersion, batch: Batch) -> tuple[list[str], np.ndarray, list[bool]]:
        """Cache keys per segment, the embeddings found, and which were found (validated: a stored
        value of the wrong length or with NaN is a miss, counted, and overwritten)."""
        t0 = time.perf_counter()
        name = C.model_name(mv.modality, "encoder")
        keys = [
            cache_key(name, mv.version, mv.preprocess_version, mv.encoder_sha256, batch.fs, s)
            for s in batch.x
        ]
        stored = await self.state.cache.get_many(keys)
        emb = np.empty((len(keys), C.EMBED_DIM), dtype=np.float32)
        hit = [False] * len(keys)
        for i, v in enumerate(stored):
            if v is None:
                continue
            vec = decode(v) if len(v) == EMBEDDING_BYTES else None
            if vec is None or not np.isfinite(vec).all():
                CACHE_ERRORS.labels(self.state.cache.name, "invalid").inc()
                continue
            emb[i], hit[i] = vec, True
        STAGE_SECONDS.labels("cache", self.endpoint).observe(time.perf_counter() - t0)
        return keys, emb, hit

    async def embed_misses(
        self, mv: ModelVersion, batch: Batch, keys: list[str], emb: np.ndarray, hit: list[bool]
    ) -> dict[str, Any]:
        """Preprocess what is needed, run the misses through the batcher, check and cache them."""
        n = len(keys)
        quality: dict[str, Any] = {
            "flags": [[] for _ in keys],
            "heart_rate_bpm": [None] * n,
            "sqi": [None] * n,
        }
        miss = [i for i in range(n) if not hit[i]]
        need = miss if batch.quality == "basic" else list(range(n))
        if need:
            prep: Prepared = await self._cpu(
                "preprocess", preprocess, batch.x[need], batch.fs, mv.spec, batch.quality == "full"
            )
            if prep.flat:
                raise ValidationFailed(
                    [
                        Problem(
                            "flat_line",
                            f"segment {need[j]}: a channel has no signal in the model's band",
                            need[j],
                        )
                        for j in prep.flat
                    ]
                )
            for j, i in enumerate(need):
                quality["flags"][i], quality["heart_rate_bpm"][i], quality["sqi"][i] = (
                    prep.flags[j],
                    prep.heart_rate_bpm[j],
                    prep.sqi[j],
                )
            if miss:
                # need is either the misses themselves or every segment (quality=full)
                rows = list(range(len(miss))) if need is miss else miss
                out = await self.state.batcher(mv).submit(prep.data[rows], self.endpoint)
                self.check_finite(out, miss, "embedding")
                emb[miss] = out
                await self.state.cache.set_many({keys[i]: encode(out[j]) for j, i in enumerate(miss)})
        quality["cached"] = hit
        return quality

    @staticmethod
    def check_finite(out: np.ndarray, segments: list[int], what: str) -> None:
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        if bad.size:
            raise NonFiniteOutput(
                [
                    Problem(
                        "non_finite_output",
                        f"segment {segments[j]}: the model's {what} is not finite",
                        segments[j],
                    )
                    for j in bad
                    if j < len(segments)
                ]
                or [Problem("non_finite_output", f"the model's {what} for the mean embedding is not finite")]
            )

    async def probes(self, mv: ModelVersion, emb: np.ndarray) -> np.ndarray:
        if not mv.outputs:
            raise UnknownModel(f"{mv.modality} version {mv.version} has no probe heads")
        t0 = time.perf_counter()
        out = await self.state.backend.predict(mv, np.concatenate([emb, emb.mean(axis=0, keepdims=True)]))
        STAGE_SECONDS.labels("probes", self.endpoint).observe(time.perf_counter() - t0)
        self.check_finite(out, list(range(len(emb))), "probe output")
        return out
