"""How late the event loop runs what is due, for ops: `pulsefm_event_loop_lag_seconds`.

Every 429, /healthz answer and admitted request waits for the event loop: behind other callbacks,
or for the GIL behind the CPU threads (a C call that holds it, such as LAPACK, holds the loop as
long). `watch_lag` sleeps `every_s` and records how much later than asked it woke.

`StallWatchdog` (opt-in: `PULSEFM_LOOP_STALL_LOG_MS`) is what finds the cause: a thread that, when
the loop has not beaten for longer than the threshold, logs every thread's stack at that moment
(the loop's own frame shows where it waits; the others, who holds the GIL). It is how the BLAS
stalls of docs/operating.md ("LAPACK on the GIL") were found. It wakes every few ms to look, so it
is off by default.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

from prometheus_client import Histogram

log = logging.getLogger("pulsefm.looplag")

LOOP_LAG = Histogram(
    "pulsefm_event_loop_lag_seconds",
    "How much later than due the event loop woke a sleeping task (a 429 or /healthz waits as long)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
STACK_FRAMES = 8


async def watch_lag(every_s: float = 0.1) -> None:
    """Record the loop's lag every `every_s` for ever (cancel to stop)."""
    while True:
        asked = time.perf_counter()
        await asyncio.sleep(every_s)
        LOOP_LAG.observe(max(0.0, time.perf_counter() - asked - every_s))


class StallWatchdog:
    """A daemon thread that logs every thread's stack when the loop is late by over `threshold_s`."""

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self.loop_thread = threading.get_ident()  # made on the loop's thread
        self.last = time.perf_counter()
        self.stalls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-stall-watchdog", daemon=True)

    def start(self) -> StallWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    async def beats(self) -> None:
        """The loop's heartbeat, for ever (cancel to stop): run it as a task on the watched loop."""
        while True:
            self.last = time.perf_counter()
            await asyncio.sleep(self.threshold_s / 4)

    def _run(self) -> None:
        reported = None
        while not self._stop.wait(min(self.threshold_s / 4, 0.01)):
            last = self.last
            late = time.perf_counter() - last
            if late > self.threshold_s and reported != last:
                reported = last
                self.stalls += 1
                log.warning("event loop stalled %.0f ms; threads: %s", late * 1000, self.stacks())

    def stacks(self) -> str:
        names = {t.ident: t.name for t in threading.enumerate()}
        parts = []
        for ident, frame in sys._current_frames().items():
            if ident == self._thread.ident:
                continue
            who = "event loop" if ident == self.loop_thread else names.get(ident, str(ident))
            where = " > ".join(
                f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                for f in traceback.extract_stack(frame)[-STACK_FRAMES:]
            )
            parts.append(f"[{who}] {where}")
        return " | ".join(parts)
