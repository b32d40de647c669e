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

    from benchmarks.overload import recovery_time, sparse_probes

    class OneSlowProbe:
        def __init__(self) -> None:
            self.calls, self.idle = 0, [object()]

        async def request(self, raw: bytes) -> tuple[int, bytes, bool]:
            self.calls += 1
            await asyncio.sleep(0.05 if self.calls == 2 else 0.0)
            return 200, b"", False

    pool = OneSlowProbe()
    seen = asyncio.run(sparse_probes(pool, [b"x"], seconds=0.6))  # type: ignore[arg-type]
    assert pool.calls >= 4 and 0.0 <= seen[0].scheduled < 0.01  # seconds from the first probe
    # every later probe within 2x (window=1): recovered at the probe after the slow one
    recovered, slow = recovery_time(seen, normal_p50=0.005, window=1)
    assert [(status, latency >= 50) for _, status, latency in slow] == [(200, True)]
    assert recovered is not None and slow[0][0] < recovered < 0.6
    # the default judges medians of 5: one slow probe is the unloaded tail, listed but not judged
    assert recovery_time(seen, normal_p50=0.005)[0] == 0.0
    # against a baseline as slow as the slow probe: nothing to recover from
    assert recovery_time(seen, normal_p50=0.05) == (0.0, [])


def test_recovery_is_where_the_slow_probes_end_and_never_when_they_do_not() -> None:
    from benchmarks.overload import Outcome, recovery_time

    def series(latencies_ms: list[float], failed: tuple[int, ...] = ()) -> list[Outcome]:
        return [Outcome(i / 10, 0 if i in failed else 200, ms / 1000) for i, ms in enumerate(latencies_ms)]

    draining = series([50.0] * 8 + [5.0] * 12)  # a queue that empties at probe 8 (0.8 s)
    assert recovery_time(draining, normal_p50=0.005) == (0.8, [(i / 10, 200, 50.0) for i in range(8)])
    assert recovery_time(draining, normal_p50=0.005, window=1)[0] == 0.8
    never = series([5.0] * 5 + [50.0] * 15)
    assert recovery_time(never, normal_p50=0.005)[0] is None
    failing = series([5.0] * 20, failed=tuple(range(4, 20)))  # failures are slow, whatever their time
    assert recovery_time(failing, normal_p50=0.005)[0] is None
    assert recovery_time(series([5.0] * 20), normal_p50=0.005) == (0.0, [])


def test_the_recovery_text_names_its_baseline_the_control_and_the_earlier_rules() -> None:
    from benchmarks.overload import recovery_text

    phases = [
        {
            "phase": f"{f}x open loop",
            "recovery_s": 0.0,
            "recovery_single_probe_s": r1,
            "recovery_vs_back_to_back_p50_s": r2,
        }
        for f, r1, r2 in ((1, 1.2, 5.1), (2, 0.0, 0.3), (4, 0.4, None))
    ]
    result = {
        "phases": phases,
        "back_to_back_p50_ms": 3.9,
        "recovery_at_rest_s": 0.0,
        "recovery_single_probe_at_rest_s": 5.2,
        "unloaded_p50_ms": 6.0,
    }
    text = recovery_text(result)
    assert "one request every 100 ms at rest" in text and "5 probes centred on it" in text
    assert "a second series at rest: 0.0 s" in text and "within 2x: 5.2 s" in text
    assert "1.2 / 0.0 / 0.4 s" in text
    assert "3.9 ms" in text and "5.1 / 0.3 / None s" in text
    assert "at rest" not in recovery_text({"phases": phases})  # a result written before the change


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
    sliced = capacity_text(
        {"capacity_rps": 175.0, "capacity_range_rps": [150.0, 200.0]}, {"capacity_clients": 32, "slices": 4}
    )
    assert "4 slices taking turns" in sliced and "150.0-200.0" in sliced and "slice_ratios" in sliced


def test_the_cores_of_equal_slices_are_averaged() -> None:
    from benchmarks.overload import _mean

    assert _mean(
        [{"cores_gateway": 1.0, "cores_generator": 0.1}, {"cores_gateway": 1.5, "cores_generator": 0.2}]
    ) == {
        "cores_gateway": 1.25,
        "cores_generator": 0.15,
    }
    assert _mean([]) == {}
