"""The request pipeline of /v1/embed and /v1/predict, one stage per method, in the order they run:

    validate (decode, cut into windows, check each) -> resolve -> per chunk of windows: admit ->
    cache lookup -> preprocess -> batch + backend -> finite check -> cache write -> (predict) probes

Admission by request count and body bytes happened before the body was read (service/asgi.py);
`admit` here is the second bound, by windows, chunk by chunk (`max_segments` at a time), so a long
recording goes through in steps instead of being refused. CPU stages run in the gateway's own
bounded pool, never on the event loop.

Partial success: a window that fails a check (raw samples, a channel flat in the model's band,
a non-finite embedding or probe output) is reported with its reasons and left out; the request
fails (422 naming every window's reasons) only when no window is usable. A non-finite output is
never returned or cached.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from pulsefm import contract as C
from pulsefm.plausibility import OUT_OF_DISTRIBUTION
from pulsefm.quality import FLAT_LINE
from service.cache import decode, encode, key_for, segment_digest
from service.decoding import Batch, Limits, parse_batch
from service.errors import NonFiniteOutput, NotReady, Problem, UnknownModel
from service.metrics import (
    CACHE_ERRORS,
    FAILURES,
    ROUTED,
    SEGMENTS,
    SHADOW_COSINE,
    SHADOW_DELTA,
    SHADOW_SKIPPED,
    STAGE_SECONDS,
    WINDOWS_REJECTED,
)
from service.registry import ModelVersion
from service.signals import Prepared, preprocess
from service.state import State
from service.windows import NON_FINITE_OUTPUT, Windows

EMBEDDING_BYTES = 4 * C.EMBED_DIM
log = logging.getLogger("pulsefm.gateway")


@dataclass
class Body:
    data: bytes
    content_type: str
    shape: str | None
    query: dict[str, str]
    client: str | None = None  # who asks (X-Client-ID, else the API key, else the address): canary stickiness


@dataclass
class Quality:
    """Per window: soft flags, heart rate and SQI (quality=full), served from the cache."""

    flags: list[list[str]]
    heart_rate_bpm: list[float | None]
    sqi: list[float | None]
    cached: list[bool]
    ood_score: list[float | None]  # distance to the probes' training embeddings (~1 = typical)

    @classmethod
    def empty(cls, n: int) -> Quality:
        return cls([[] for _ in range(n)], [None] * n, [None] * n, [False] * n, [None] * n)


@dataclass
class Result:
    model: ModelVersion
    windows: Windows
    embeddings: np.ndarray  # (windows, 256) float32; NaN rows for the unusable ones
    quality: Quality
    used: list[int]  # usable windows, ascending
    predictions: np.ndarray | None = None  # (len(used) + 1, K): per used window, then the mean's

    @property
    def mean_embedding(self) -> np.ndarray:
        return np.asarray(self.embeddings[self.used].mean(axis=0), dtype=np.float32)


class Pipeline:
    def __init__(self, state: State, endpoint: str) -> None:
        self.state, self.endpoint = state, endpoint
        s = state.settings
        self.limits = Limits(s.max_windows, s.min_fs, s.max_fs, s.duration_tolerance, s.max_decoded_bytes)
        self.chunk = max(1, s.max_segments)

    async def run(self, body: Body, with_probes: bool = False) -> Result:
        return await self.serve(await self.validate(body), with_probes, body.client)

    async def serve(self, batch: Batch, with_probes: bool = False, client: str | None = None) -> Result:
        mv = self.resolve(batch, client)
        win = batch.windows
        emb = np.full((len(win), C.EMBED_DIM), np.nan, dtype=np.float32)
        quality = Quality.empty(len(win))
        usable = win.usable()
        for a in range(0, len(usable), self.chunk):
            chunk = usable[a : a + self.chunk]
            with self.state.admit(len(chunk)):
                await self.embed_chunk(mv, batch, chunk, emb, quality)
        if not win.usable():  # every window failed after the raw checks (flat in band, non-finite output)
            raise win.unusable()
        res = Result(mv, win, emb, quality, win.usable())
        self.plausibility(res)
        if with_probes:
            await self.probes(res)
        self.count(res)
        if batch.model_version is None:
            self.shadow(batch, res)
        return res

    async def _cpu(self, stage: str, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = await asyncio.get_running_loop().run_in_executor(self.state.cpu, partial(fn, *args))
        STAGE_SECONDS.labels(stage, self.endpoint).observe(time.perf_counter() - t0)
        return out

    async def validate(self, body: Body) -> Batch:
        batch: Batch = await self._cpu("validation", self._parse, body)
        return batch

    def _parse(self, body: Body) -> Batch:
        """In the CPU pool: the parse, and (cache on) each usable window's digest for its key."""
        batch = parse_batch(body.data, body.content_type, body.shape, body.query, self.limits)
        if self.state.cache.enabled:
            batch.digests.update(window_digests(batch.windows, batch.windows.usable()))
        return batch

    def resolve(self, batch: Batch, client: str | None = None) -> ModelVersion:
        if not self.state.ready:
            raise NotReady("models are not loaded yet (backend unreachable?); see /readyz")
        reg = self.state.registry
        mv = reg.resolve(batch.modality, batch.model_version, client)
        route = "pinned" if batch.model_version is not None else "current"
        if batch.model_version is None and mv.version != reg.current(mv.modality):
            route = "canary"
        ROUTED.labels(mv.modality, str(mv.version), route).inc()
        SEGMENTS.labels(self.endpoint, mv.modality).inc(len(batch.windows))
        return mv

    async def lookup(
        self, mv: ModelVersion, batch: Batch, chunk: list[int]
    ) -> tuple[list[str], list[bool], np.ndarray]:
        """Cache keys per window, which were found, and what was found (validated: a stored value
        of the wrong length or with NaN is a miss, counted, and overwritten)."""
        if not self.state.cache.enabled:
            return [""] * len(chunk), [False] * len(chunk), np.empty((len(chunk), C.EMBED_DIM), np.float32)
        t0 = time.perf_counter()
        name = C.model_name(mv.modality, "encoder")
        if any(w not in batch.digests for w in chunk):  # a batch not made by `validate`
            batch.digests.update(await self._cpu("cache", window_digests, batch.windows, chunk))
        keys = [
            key_for(name, mv.version, mv.preprocess_version, mv.encoder_sha256, batch.digests[w])
            for w in chunk
        ]
        stored = await self.state.cache.get_many(keys)
        found = np.empty((len(keys), C.EMBED_DIM), dtype=np.float32)
        hit = [False] * len(keys)
        for i, v in enumerate(stored):
            if v is None:
                continue
            vec = decode(v) if len(v) == EMBEDDING_BYTES else None
            if vec is None or not np.isfinite(vec).all():
                CACHE_ERRORS.labels(self.state.cache.name, "invalid").inc()
                continue
            found[i], hit[i] = vec, True
        STAGE_SECONDS.labels("cache", self.endpoint).observe(time.perf_counter() - t0)
        return keys, hit, found

    async def embed_chunk(
        self, mv: ModelVersion, batch: Batch, chunk: list[int], emb: np.ndarray, quality: Quality
    ) -> None:
        """Embeddings of windows `chunk` into `emb`: from the cache, else preprocessed and run through
        the batcher, checked and cached. Windows that fail are rejected in `batch.windows`."""
        win = batch.windows
        segs = win.take(chunk)
        keys, hit, found = await self.lookup(mv, batch, chunk)
        for j, w in enumerate(chunk):
            if hit[j]:
                emb[w], quality.cached[w] = found[j], True
        miss = [j for j in range(len(chunk)) if not hit[j]]
        need = miss if batch.quality == "basic" else list(range(len(chunk)))
        if not need:
            return
        prep: Prepared = await self._cpu(
            "preprocess", preprocess, segs[need], batch.fs, mv.spec, batch.quality == "full"
        )
        flat = set(prep.flat)
        for k, j in enumerate(need):
            w = chunk[j]
            if k in flat:
                win.reject(w, FLAT_LINE, "a channel has no signal in the model's band")
                emb[w] = np.nan
                continue
            quality.flags[w], quality.heart_rate_bpm[w], quality.sqi[w] = (
                prep.flags[k],
                prep.heart_rate_bpm[k],
                prep.sqi[k],
            )
        rows = [k for k, j in enumerate(need) if not hit[j] and k not in flat]
        if not rows:
            return
        out = await self.state.batcher(mv).submit(prep.data[rows], self.endpoint)
        finite = np.isfinite(out).all(axis=1)
        fresh: dict[str, bytes] = {}
        for r, k in enumerate(rows):
            j = need[k]
            if not finite[r]:
                win.reject(chunk[j], NON_FINITE_OUTPUT, "the model's embedding is not finite")
                continue
            emb[chunk[j]] = out[r]
            fresh[keys[j]] = encode(out[r])
        if fresh and self.state.cache.enabled:
            await self.state.cache.set_many(fresh)

    async def probes(self, res: Result) -> None:
        """Probe outputs per usable window and for their mean embedding; a window whose outputs are
        not finite is rejected (and the mean taken again without it)."""
        mv = res.model
        if not mv.outputs:
            raise UnknownModel(f"{mv.modality} version {mv.version} has no probe heads")
        t0 = time.perf_counter()
        while True:
            if not res.used:
                raise res.windows.unusable()
            rows = np.concatenate([res.embeddings[res.used], res.mean_embedding[None]])
            out = await self.state.backend.predict(mv, rows)
            bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
            if not bad.size:
                break
            if bad[-1] == len(res.used) and bad.size == 1:
                raise NonFiniteOutput(
                    [Problem(NON_FINITE_OUTPUT, "the probes' output for the mean embedding is not finite")]
                )
            for b in bad[bad < len(res.used)]:
                res.windows.reject(res.used[b], NON_FINITE_OUTPUT, "the probes' output is not finite")
            res.used = res.windows.usable()
        STAGE_SECONDS.labels("probes", self.endpoint).observe(time.perf_counter() - t0)
        res.predictions = out

    @staticmethod
    def plausibility(res: Result) -> None:
        """Each usable window's OOD score, flagged `out_of_distribution` above the version's
        threshold (chosen on held-out data at export; pulsefm/plausibility.py)."""
        plaus = res.model.plausibility
        if plaus is None or not res.used:
            return
        scores = plaus.ood.score(res.embeddings[res.used])
        for w, score in zip(res.used, scores, strict=True):
            res.quality.ood_score[w] = round(float(score), 3)
            if score > plaus.ood.threshold:
                res.quality.flags[w] = [*res.quality.flags[w], OUT_OF_DISTRIBUTION]

    def shadow(self, batch: Batch, res: Result) -> None:
        """Run the shadow candidate on the same windows off the critical path (the answer does not
        wait), within the gateway's shadow budget; record how the two versions differ."""
        candidate = self.state.registry.candidate(res.model.modality, "shadow")
        if candidate is None or candidate.version == res.model.version or not res.used:
            return
        budget = self.state.shadow
        if not budget.take(len(res.used)):
            SHADOW_SKIPPED.labels(res.model.modality).inc()
            return
        task = asyncio.ensure_future(self._shadow(candidate, batch, res))
        task.add_done_callback(lambda t: budget.give(len(res.used)))
        self.state.background.add(task)
        task.add_done_callback(self.state.background.discard)

    async def _shadow(self, candidate: ModelVersion, batch: Batch, res: Result) -> None:
        try:
            windows = dataclasses.replace(
                batch.windows, problems={w: list(p) for w, p in batch.windows.problems.items()}
            )
            mirror = dataclasses.replace(batch, windows=windows)
            emb = np.full_like(res.embeddings, np.nan)
            quality = Quality.empty(len(windows))
            shadow = Pipeline(self.state, "shadow")
            for start in range(0, len(res.used), self.chunk):
                chunk = res.used[start : start + self.chunk]
                await shadow.embed_chunk(candidate, mirror, chunk, emb, quality)
            both = [w for w in res.used if np.isfinite(emb[w]).all()]
            if not both:
                return
            ea, eb = res.embeddings[both].astype(np.float64), emb[both].astype(np.float64)
            norms = np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1)
            cosine = (ea * eb).sum(1) / np.maximum(norms, 1e-12)
            labels = (candidate.modality, str(res.model.version), str(candidate.version))
            for c in cosine:
                SHADOW_COSINE.labels(*labels).observe(float(c))
            targets = [o["target"] for o in candidate.outputs]
            current_targets = [o["target"] for o in res.model.outputs]
            if candidate.outputs and res.model.outputs:
                pa = await self.state.backend.predict(res.model, res.embeddings[both])
                pb = await self.state.backend.predict(candidate, emb[both])
                for j, t in enumerate(targets):
                    if t in current_targets:
                        for delta in np.abs(pb[:, j] - pa[:, current_targets.index(t)]):
                            SHADOW_DELTA.labels(candidate.modality, t).observe(float(delta))
        except Exception:  # the shadow must never hurt the answer; count and log it
            FAILURES.labels("shadow").inc()
            log.exception("shadow run of %s v%d failed", candidate.modality, candidate.version)

    def count(self, res: Result) -> None:
        """Rejected windows by reason; drift metrics of the answered ones (service/drift.py)."""
        mv = res.model
        for problems in res.windows.problems.values():
            for p in problems:
                WINDOWS_REJECTED.labels(self.endpoint, mv.modality, p.reason).inc()
        q = res.quality
        self.state.drift.observe(
            mv.modality,
            mv.version,
            res.embeddings[res.used],
            [q.flags[w] for w in res.used],
            [q.ood_score[w] for w in res.used],
        )
        if res.predictions is not None:
            targets = [o["target"] for o in mv.outputs]
            self.state.drift.observe_predictions(mv.modality, mv.version, targets, res.predictions[:-1])


def window_digests(win: Windows, ws: list[int]) -> dict[int, str]:
    """Window -> sha256 of its raw samples (the input half of its cache key); CPU pool only."""
    return {w: segment_digest(win.fs, win.take([w])[0]) for w in ws}
