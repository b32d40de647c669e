"""Micro-batcher: one task owns a queue and cuts batches by max size and max wait.

Requests put their segments in the queue and await a future. The owner task takes the first
waiting request, keeps taking until the batch holds `max_batch` segments or `max_wait_s` has
passed (no wait at all when nothing else is queued and no batch is running: batching happens
under load, an idle gateway adds no delay), skips requests whose client has gone (their future
was cancelled), and runs the
backend on the concatenation (at most `concurrency` batches in flight). The number of queued
segments is bounded: past `max_queued`, `submit` raises `Overloaded` (HTTP 429 + Retry-After).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from service.errors import Overloaded
from service.metrics import BATCH_SIZE, DROPPED, QUEUE_DEPTH, STAGE_SECONDS

__all__ = ["MicroBatcher", "Overloaded"]


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]
    endpoint: str
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], Awaitable[np.ndarray]],
        label: str,
        max_batch: int = 64,
        max_wait_s: float = 0.002,
        max_queued: int = 1024,
        concurrency: int = 2,
    ) -> None:
        self.run, self.label = run, label
        self.max_batch, self.max_wait_s, self.max_queued = max_batch, max_wait_s, max_queued
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.queued = 0
        self.inflight = asyncio.Semaphore(concurrency)
        self.task: asyncio.Task[None] | None = None
        self.running: set[asyncio.Task[None]] = set()
        self._carry: _Item | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._loop(), name=f"batcher-{self.label}")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(Overloaded("gateway shutting down"))

    async def submit(self, x: np.ndarray, endpoint: str = "embed") -> np.ndarray:
        n = len(x)
        if self.queued + n > self.max_queued:
            raise Overloaded(f"{self.queued} segments queued (limit {self.max_queued})")
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.queued += n
        QUEUE_DEPTH.labels(self.label).set(self.queued)
        self.queue.put_nowait(_Item(x, fut, endpoint))
        try:
            return await fut
        except asyncio.CancelledError:
            fut.cancel()  # the owner skips it; its segments never reach the backend
            raise

    async def _next(self, timeout: float | None) -> _Item | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self.queue.get()
        try:
            return await asyncio.wait_for(self.queue.get(), max(timeout, 0.0))
        except TimeoutError:
            return None

    async def _loop(self) -> None:
        while True:
            first = await self._next(None)
            assert first is not None
            batch, size = [first], len(first.x)
            # nothing else waiting and no batch running: waiting would only add latency
            idle = self.queue.empty() and self._carry is None and not self.running
            deadline = time.perf_counter() + (0.0 if idle else self.max_wait_s)
            while size < self.max_batch:
                item = await self._next(deadline - time.perf_counter())
                if item is None:
                    break
                if size + len(item.x) > self.max_batch:
                    self._carry = item  # starts the next batch
                    break
                batch.append(item)
                size += len(item.x)
            await self.inflight.acquire()
            task = asyncio.create_task(self._execute(batch))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _execute(self, batch: list[_Item]) -> None:
        try:
            self.queued -= sum(len(b.x) for b in batch)
            QUEUE_DEPTH.labels(self.label).set(self.queued)
            live = [b for b in batch if not b.future.done()]
            for b in batch:
                if b.future.cancelled():
                    DROPPED.labels(self.label).inc(len(b.x))
            if not live:
                return
            now = time.perf_counter()
            for b in live:
                STAGE_SECONDS.labels("queue_wait", b.endpoint).observe(now - b.enqueued)
            x = np.concatenate([b.x for b in live]) if len(live) > 1 else live[0].x
            BATCH_SIZE.labels(self.label).observe(len(x))
            t0 = time.perf_counter()
            try:
                out = await self.run(x)
            except Exception as exc:
                for b in live:
                    if not b.future.done():
                        b.future.set_exception(exc)
                return
            dt = time.perf_counter() - t0
            start = 0
            for b in live:
                STAGE_SECONDS.labels("inference", b.endpoint).observe(dt)
                if not b.future.done():
                    b.future.set_result(out[start : start + len(b.x)])
                start += len(b.x)
        finally:
            self.inflight.release()
