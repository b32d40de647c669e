"""Freed memory goes back to the system after a large body (service/memory.py)."""

from __future__ import annotations

import asyncio
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from service import memory
from service.app import create_app
from service.settings import Settings
from tests.gateway_helpers import build_repo, npy, raw_segments


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibcs_malloc_trim_is_found_and_runs() -> None:
    assert memory.MALLOC_TRIM is not None and memory.MALLOC_TRIM(0) in (0, 1)


def test_the_trim_runs_in_the_executor_only_after_large_bodies(monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "MALLOC_TRIM", calls.append)

    async def after(body_bytes: int) -> None:
        with ThreadPoolExecutor(1) as pool:
            memory.release_after(body_bytes, pool)
            await asyncio.sleep(0.05)

    asyncio.run(after(memory.TRIM_AFTER_BYTES - 1))
    assert calls == []
    asyncio.run(after(memory.TRIM_AFTER_BYTES))
    assert calls == [0]


def test_the_gateway_trims_after_a_large_request(tmp_path, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "MALLOC_TRIM", calls.append)
    monkeypatch.setattr(memory, "TRIM_AFTER_BYTES", 1000)  # one ECG window's .npy is 15 KB
    body = npy(raw_segments("ecg", 1, 128.0))
    with TestClient(create_app(Settings(repo=build_repo(tmp_path)))) as c:
        r = c.post(
            "/v1/embed",
            params={"modality": "ecg", "fs": "128"},
            content=body,
            headers={"Content-Type": "application/x-npy"},
        )
        bad = c.post(
            "/v1/embed",
            params={"modality": "ecg"},
            content=body,
            headers={"Content-Type": "application/x-npy"},
        )  # refused (no fs): trimmed too
        # the trim runs in the CPU pool after the answer; shutdown cancels what has not started yet
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert r.status_code == 200 and bad.status_code == 422
    assert calls == [0, 0]
