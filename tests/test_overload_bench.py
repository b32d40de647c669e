"""benchmarks/overload.py's bookkeeping: phases summarised per outcome, 429s split by connection."""

from __future__ import annotations

from benchmarks.overload import Outcome, summarise, table


def test_refusals_are_split_by_whether_their_connection_was_new() -> None:
    out = [Outcome(0.0, 200, 0.010, 0.001)]
    out += [Outcome(0.0, 429, 0.002, 0.0005) for _ in range(98)]
    out += [Outcome(0.0, 429, 0.400, 0.002, new_connection=True) for _ in range(2)]
    out += [Outcome(0.0, 0, 0.050, 0.0)]  # a connection failure
    row = summarise("4x open loop", 400.0, 1.0, out, [Outcome(0.0, 200, 0.003)])

    assert (row["ok"], row["refused_429"], row["connection_failures"]) == (1, 100, 1)
    assert row["refused_new_connection"] == 2
    assert row["refused_new_connection_p99_ms"] == 400.0
    assert row["refused_reused_connection_p99_ms"] == 2.0
    assert row["refused_p99_ms"] > 300  # the two slow ones are in the overall tail
    assert row["send_lag_p99_ms"] is not None and 1.0 < row["send_lag_p99_ms"] <= 2.0

    text = table({"phases": [row]})
    header, _, line = text.splitlines()
    cells = dict(zip(header.split(" | "), line.split(" | "), strict=True))
    assert cells["429 p99 ms, new conn. (count)"] == "400.0 (2)"
    assert cells["429 p99 ms, kept-alive conn."] == "2.0"


def test_serve_freezes_the_startup_heap_unless_told_not_to(monkeypatch) -> None:
    import gc
    import sys

    import uvicorn

    from service import serve
    from service.settings import Settings

    calls: list[str] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(sys, "setswitchinterval", lambda seconds: None)  # this process's own stays
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: calls.append("run"))
    serve.run_gateway(Settings(), "127.0.0.1", 0, "warning")
    serve.run_gateway(Settings(gc_freeze=False), "127.0.0.1", 0, "warning")
    assert calls == ["freeze", "run", "run"]


def test_serve_limits_blas_to_the_configured_threads(monkeypatch) -> None:
    """LAPACK holds the GIL until it returns: the gateway gives BLAS one thread by default."""
    import sys

    import numpy as np
    import uvicorn
    from threadpoolctl import threadpool_info, threadpool_limits

    from service import serve
    from service.settings import Settings

    np.linalg.eigvalsh(np.eye(4))  # numpy's BLAS is loaded
    monkeypatch.setattr(sys, "setswitchinterval", lambda seconds: None)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    with threadpool_limits(limits=None):  # this test process gets its own limits back afterwards
        serve.run_gateway(Settings(gc_freeze=False), "127.0.0.1", 0, "warning")
        blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        assert blas and set(blas) == {1}
        serve.run_gateway(Settings(gc_freeze=False, blas_threads=2), "127.0.0.1", 0, "warning")
        assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {2}


def test_recovery_is_the_first_probe_after_the_last_slow_one_and_lists_the_slow_ones() -> None:
    import asyncio

    from benchmarks.overload import recovery

    class OneSlowProbe:
        def __init__(self) -> None:
            self.calls, self.idle = 0, [object()]

        async def request(self, raw: bytes) -> tuple[int, bytes, bool]:
            self.calls += 1
            await asyncio.sleep(0.05 if self.calls == 2 else 0.0)
            return 200, b"", False

    pool = OneSlowProbe()
    recovered, slow = asyncio.run(
        recovery(pool, [b"x"], normal_p50=0.005, seconds=0.6)  # type: ignore[arg-type]
    )
    assert pool.calls >= 4
    assert [(status, latency >= 50) for _, status, latency in slow] == [(200, True)]
    assert recovered is not None and slow[0][0] < recovered < 0.6


def test_a_pool_without_reuse_opens_a_connection_per_request() -> None:
    """--connection-per-request: every request on its own connection (each one accepted by the
    server), closed after the answer; the default pool reuses one kept-alive connection."""
    import asyncio
    import contextlib

    from benchmarks.overload import Pool

    answer = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\n\r\n{}"

    async def scenario(reuse: bool) -> tuple[int, int, list[int], list[bool]]:
        accepted = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while await reader.readuntil(b"\r\n\r\n"):
                    writer.write(answer)
                    await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = Pool("127.0.0.1", port, reuse=reuse)
        statuses: list[int] = []
        news: list[bool] = []
        for _ in range(5):
            status, body, new = await pool.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            statuses.append(status)
            news.append(new)
            assert body == b"{}"
        pool.close()
        server.close()
        return accepted, len(pool.idle), statuses, news

    assert asyncio.run(scenario(reuse=False)) == (5, 0, [429] * 5, [True] * 5)
    assert asyncio.run(scenario(reuse=True)) == (1, 0, [429] * 5, [True] + [False] * 4)


def test_each_ratio_is_against_the_capacity_measured_before_it() -> None:
    """The capacity rows (one before each phase) are not judged; the text names their range."""
    from benchmarks.overload import capacity_text, verdicts

    phases = [
        {"phase": "capacity before 2x", "goodput_rps": 200.0},
        {"phase": "2x open loop", "goodput_vs_capacity": 0.95, "refused_p99_ms": 20.0},
        {"phase": "capacity before 4x", "goodput_rps": 150.0},
        {"phase": "4x open loop", "goodput_vs_capacity": 0.85, "refused_p99_ms": 30.0},
    ]
    for p in phases[1::2]:
        p |= {"healthz_p99_ms": 10.0, "recovery_s": 0.0}
    v = verdicts({"phases": phases})
    assert v["goodput_ratio"] == {"measured": 0.85, "goal": 0.9, "met": False}
    assert v["refused_p99_ms"]["measured"] == 30.0
    text = capacity_text(
        {"capacity_rps": 175.0, "capacity_range_rps": [150.0, 200.0]}, {"capacity_clients": 32}
    )
    assert "32 clients" in text and "175.0" in text and "150.0-200.0" in text
    assert "180" in capacity_text({"capacity_rps": 180}, {})  # results written before the change
