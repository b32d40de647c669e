"""benchmarks/serving_profile.py: py-spy's collapsed stacks into components and thread roles."""

from __future__ import annotations

import shutil

import pytest

from benchmarks.serving_profile import OTHER, component, markdown_section, parse_raw, shares, thread_role

ROOT = 'process 1:"pulse-fm serve"'
LOOP = f"{ROOT};thread (0x1);run (uvicorn/server.py:68);run_forever (asyncio/base_events.py:608)"
POOL = f"{ROOT};thread (0x2);_bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:83)"


def test_a_sample_goes_to_its_innermost_known_frame() -> None:
    text = "\n".join(
        [
            f"{LOOP};handle (service/routes/embed.py:40);dumps (orjson/__init__.py:1) 3",
            f"{LOOP};__call__ (starlette/routing.py:700) 2",
            f"{POOL};run (service/pipeline.py:126);sosfiltfilt (scipy/signal/_signaltools.py:4500) 4",
            f"{POOL};run (service/backends.py:138);run (onnxruntime/capi/session.py:220) 1",
            "garbage line without a count",
            f"{LOOP};<lambda> (somewhere.py:1) 0",
        ]
    )
    samples = parse_raw(text)
    assert len(samples) == 5
    assert component(samples[0][0]) == "orjson / json"
    assert component(samples[2][0]) == "scipy (filters, resampling)"
    assert component(["thread (0x9)", "f (x.py:1)"]) == OTHER
    assert [thread_role(s) for s, _ in samples[:4]] == ["event loop", "event loop", "CPU pool", "ORT pool"]
    assert thread_role(["thread (7): MainThread", "embed_chunk (service/pipeline.py:217)"]) == "event loop"
    assert thread_role(["thread (8): cpu_1", "_run_lengths (pulsefm/quality.py:52)"]) == "CPU pool"
    assert thread_role(["thread (9): AnyIO worker thread", "run (anyio/_backends/_asyncio.py:1)"]) == (
        "other thread"
    )
    got = shares(samples)
    assert got["component"]["scipy (filters, resampling)"] == pytest.approx(0.4)
    assert got["thread"] == pytest.approx({"event loop": 0.5, "CPU pool": 0.4, "ORT pool": 0.1})
    assert sum(got["component"].values()) == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_a_short_profile_of_the_live_gateway_accounts_for_its_samples() -> None:
    from benchmarks.serving_profile import profile

    doc = profile(seconds=3.0, clients=4)
    for kind in ("binary", "json"):
        p = doc["profiles"][kind]
        assert p["load"]["per_s"] > 0 and p["load"]["failed"] == 0
        assert p["samples"]["n"] > 50
        assert sum(p["component"].values()) == pytest.approx(1.0)
        assert p["thread"].get("event loop", 0) > 0.1
        assert p["component"].get(OTHER, 0) < 0.5  # most samples land in a named component
    assert "| event loop |" in markdown_section(doc)
