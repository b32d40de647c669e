"""The event loop's lag metric and the stall watchdog, on a real loop blocked on purpose."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from service.looplag import LOOP_LAG, StallWatchdog, watch_lag


def _lag_samples() -> tuple[float, float]:
    count = sum_ = 0.0
    for metric in LOOP_LAG.collect():
        for s in metric.samples:
            if s.name.endswith("_count"):
                count = s.value
            elif s.name.endswith("_sum"):
                sum_ = s.value
    return count, sum_


def _block_the_loop_for(seconds: float) -> None:
    time.sleep(seconds)  # a callback that holds the loop, as a GIL-holding C call would


def test_lag_is_recorded_when_the_loop_is_held() -> None:
    async def scenario() -> None:
        task = asyncio.create_task(watch_lag(0.01))
        await asyncio.sleep(0.05)
        asyncio.get_running_loop().call_soon(_block_the_loop_for, 0.15)
        await asyncio.sleep(0.1)
        task.cancel()

    count0, sum0 = _lag_samples()
    asyncio.run(scenario())
    count1, sum1 = _lag_samples()
    assert count1 - count0 >= 3
    assert sum1 - sum0 >= 0.1  # the 0.15 s hold, less the 10 ms sleep it fell in


def test_watchdog_logs_every_threads_stack_during_a_stall(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pulsefm.looplag")

    async def scenario() -> StallWatchdog:
        dog = StallWatchdog(0.05).start()
        beat = asyncio.create_task(dog.beats())
        await asyncio.sleep(0.1)
        assert dog.stalls == 0  # a beating loop is not reported
        asyncio.get_running_loop().call_soon(_block_the_loop_for, 0.3)
        await asyncio.sleep(0.05)
        beat.cancel()
        dog.stop()
        return dog

    dog = asyncio.run(scenario())
    assert dog.stalls == 1  # one stall, reported once however long it lasts
    (record,) = [r for r in caplog.records if "stalled" in r.getMessage()]
    text = record.getMessage()
    assert "[event loop]" in text and "_block_the_loop_for" in text
