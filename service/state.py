"""What one gateway process holds, and its lifecycle: loading versions, readiness, the watcher.

Loading is per version: a version whose card, checksum, file or contract is bad, or whose
warm-up gives a non-finite embedding, is left out, logged with the reason, counted
(`pulsefm_model_load_failures_total`) and listed as failed by /v1/models; every other version and
modality is served. Failed versions are retried every `retry_failed_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pulsefm import contract as C
from service import rollout
from service.backends import RETIRE_AFTER_S, Backend, OrtBackend, TritonBackend
from service.batcher import MicroBatcher
from service.cache import Cache, LRUCache, RedisCache
from service.drift import DriftMonitor
from service.errors import BackendUnavailable, Overloaded
from service.metrics import FAILURES, MODEL_INFO, MODEL_LOAD_FAILURES, MODELS_FAILED
from service.registry import LoadFailure, ModelVersion, Registry, scan
from service.settings import Settings

log = logging.getLogger("pulsefm.gateway")

START_RETRY_S = 2.0


@dataclass
class Budget:
    """Windows the shadow candidate may have in flight (off the critical path, so bounded)."""

    limit: int
    used: int = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


RELOAD_FILE = ".reload"  # rewritten by /v1/admin/reload: the other workers and replicas reload too


def request_reload(repo: Path) -> str | None:
    """Leave the reload marker in the repository (atomically); its stamp, or None if read-only."""
    path = Path(repo) / RELOAD_FILE
    try:
        tmp = path.with_name(f"{RELOAD_FILE}.{os.getpid()}")
        tmp.write_text(f"{time.time()} {os.getpid()}\n")
        tmp.replace(path)
    except OSError:
        log.warning("%s: cannot write the reload marker; other workers reload on their own watch", path)
    return rollout.file_stamp(path)


@dataclass
class Marks:
    """The admin marks in the repository this process has followed (see `watch`)."""

    rollout: str | None = None
    reload: str | None = None


@dataclass
class State:
    settings: Settings
    registry: Registry
    backend: Backend
    cache: Cache
    cpu: ThreadPoolExecutor  # decoding and preprocessing: its own bounded pool
    batchers: dict[tuple[str, int], MicroBatcher] = field(default_factory=dict)
    ready: bool = False
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    inflight: int = 0  # admitted segments not yet answered
    drift: DriftMonitor = field(default_factory=DriftMonitor)
    shadow: Budget = field(default_factory=lambda: Budget(64))
    background: set[asyncio.Task[None]] = field(default_factory=set)
    marks: Marks = field(default_factory=Marks)

    @contextlib.contextmanager
    def admit(self, n: int) -> Iterator[None]:
        """The segment bound: refuse before the expensive stages when too much is in flight."""
        if self.inflight + n > self.settings.max_inflight_segments:
            raise Overloaded(
                f"{self.inflight} segments in flight "
                f"(limit {self.settings.max_inflight_segments}); retry later"
            )
        self.inflight += n
        try:
            yield
        finally:
            self.inflight -= n

    def batcher(self, mv: ModelVersion) -> MicroBatcher:
        key = (mv.modality, mv.version)
        b = self.batchers.get(key)
        if b is None:
            b = MicroBatcher(
                functools.partial(self.backend.embed, mv),
                label=mv.modality,
                max_batch=min(self.settings.max_batch, self.backend.max_batch),
                max_wait_s=self.settings.max_wait_ms / 1000,
                max_queued=self.settings.max_queued_segments,
            )
            b.start()
            self.batchers[key] = b
        return b


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "triton":
        return TritonBackend(settings.triton_url, settings.triton_protocol, settings.max_batch)
    return OrtBackend(
        threads=settings.ort_threads, max_batch=settings.max_batch, spinning=settings.ort_spinning
    )


def make_cache(settings: Settings) -> Cache:
    if settings.redis_url:
        return RedisCache(
            settings.redis_url,
            settings.cache_ttl_s,
            settings.redis_timeout_s,
            settings.cache_breaker_failures,
            settings.cache_breaker_cooldown_s,
        )
    return LRUCache(settings.lru_entries)


async def _warm(backend: Backend, mv: ModelVersion) -> LoadFailure | None:
    """One zero segment through the encoder (and probes): a version that errs or gives NaN fails."""
    try:
        x = np.zeros((1, *C.encoder_contract(mv.modality).input.dims), dtype=np.float32)
        emb = await backend.embed(mv, x)
        out = await backend.predict(mv, emb) if mv.probes_dir is not None else emb
        if emb.shape != (1, C.EMBED_DIM) or not (np.isfinite(emb).all() and np.isfinite(out).all()):
            return LoadFailure(
                mv.modality, mv.version, "encoder", "warmup", "non-finite or mis-shaped output"
            )
    except BackendUnavailable:
        raise
    except Exception as exc:
        return LoadFailure(mv.modality, mv.version, "encoder", "warmup", str(exc)[:300])
    return None


async def reload_models(state: State) -> list[ModelVersion]:
    """Rescan the repository, load + warm new versions, then swap (in-flight requests keep theirs)."""
    async with state.reload_lock:
        fresh = Registry(state.registry.repo, state.registry.grace_s)
        fresh.reload()
        failed = list(fresh.failed)
        failed += await state.backend.load(fresh.loadable())
        bad = {(f.modality, f.version) for f in failed}
        for mv in fresh.loadable():
            if (mv.modality, mv.version) not in bad and (f := await _warm(state.backend, mv)) is not None:
                failed.append(f)
                bad.add((mv.modality, mv.version))
        for table in (fresh.models, fresh.retiring):
            for modality, versions in list(table.items()):
                for v in [v for v in versions if (modality, v) in bad]:
                    del versions[v]
                if not versions:
                    del table[modality]
        _report(state.registry.failed, failed)
        models = fresh.all()
        reg = state.registry
        reg.models, reg.retiring, reg.gone, reg.failed = (
            fresh.models,
            fresh.retiring,
            fresh.gone,
            failed,
        )  # swap
        reg.rollouts = fresh.rollouts
        MODEL_INFO.info({f"{mv.modality}_v{mv.version}": mv.encoder_sha256[:12] for mv in models})
        served = {(m.modality, m.version) for m in fresh.loadable()}
        for key in [k for k in state.batchers if k not in served]:
            old = state.batchers.pop(key)
            asyncio.get_running_loop().call_later(RETIRE_AFTER_S, _stop_later, state, old)
        return models


def _report(before: list[LoadFailure], now: list[LoadFailure]) -> None:
    MODELS_FAILED.set(len(now))
    known = {(f.modality, f.version, f.kind, f.detail) for f in before}
    for f in now:
        MODEL_LOAD_FAILURES.labels(f.modality, f.reason).inc()
        if (f.modality, f.version, f.kind, f.detail) not in known:
            log.error("not serving %s %s v%d (%s): %s", f.modality, f.kind, f.version, f.reason, f.detail)


async def start(state: State) -> None:
    """Load models; while the backend (e.g. Triton) is unreachable, /readyz says 503 and we retry."""
    while True:
        try:
            await reload_models(state)
            state.ready = True
            return
        except BackendUnavailable:
            FAILURES.labels("startup").inc()
            await asyncio.sleep(START_RETRY_S)


def _stop_later(state: State, batcher: MicroBatcher) -> None:
    task = asyncio.ensure_future(batcher.stop())
    state.background.add(task)
    task.add_done_callback(state.background.discard)


async def watch(state: State, every_s: float) -> None:
    """Reload when the repository's versions change (every_s > 0), retry failed versions, and
    follow admin calls answered by another worker or replica (`watch_admin_s`): a changed
    rollout.json is re-read, a changed reload marker reloads."""
    repo, retry, admin_s = state.registry.repo, state.settings.retry_failed_s, state.settings.watch_admin_s
    period = min(x for x in (every_s, retry, admin_s) if x > 0)
    last: set[tuple[str, int]] = set()
    state.marks = Marks(rollout.stamp(repo), rollout.file_stamp(repo / RELOAD_FILE))
    since_retry = since_scan = 0.0
    while True:
        await asyncio.sleep(period)
        since_retry += period
        since_scan += period
        try:
            if admin_s > 0:
                asked = rollout.file_stamp(repo / RELOAD_FILE)
                if asked != state.marks.reload:
                    state.marks.reload = asked
                    await reload_models(state)  # re-reads the rollout state too
                    state.marks.rollout = rollout.stamp(repo)
                    continue
                changed = rollout.stamp(repo)
                if changed != state.marks.rollout:
                    state.marks.rollout = changed
                    state.registry.load_rollouts()
            if state.registry.failed and retry > 0 and since_retry >= retry:
                since_retry = 0.0
                await reload_models(state)
                continue
            if every_s > 0 and since_scan >= every_s:
                since_scan = 0.0
                now = {(m, v) for m, vs in scan(repo).items() for v in vs}
                if now != last:
                    await reload_models(state)
                    last = now
        except Exception:  # a half-copied repository must not kill the watcher
            FAILURES.labels("watch").inc()
            log.exception("repository watch failed")
