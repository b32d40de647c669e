"""Gateway parts that matter at scale: micro-batcher, real Redis cache, hot version swap, Triton backend."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import numpy as np
import pytest
import torch

from pulsefm import contract as C
from service.app import create_app
from service.backends import FakeBackend
from service.batcher import MicroBatcher, Overloaded
from service.cache import RedisCache, cache_key
from service.registry import ModelVersion
from service.settings import Settings
from tests.gateway_helpers import ServerThread, build_repo, raw_segments
from tests.test_export import make_artifact
from training.publish import publish

REDIS = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("gws"))


def _mv() -> ModelVersion:
    from pathlib import Path

    return ModelVersion("ecg", 1, Path(), {"preprocess_version": "x", "sha256": "0" * 64})


# ------------------------------------------------------------------------------------ batcher
async def test_batcher_cuts_by_size_and_wait() -> None:
    fake = FakeBackend(max_batch=8, delay_s=0.01)
    mv = _mv()
    b = MicroBatcher(lambda x: fake.embed(mv, x), "ecg", max_batch=8, max_wait_s=0.05)
    b.start()
    xs = [np.full((1, 1, 16), i, dtype=np.float32) for i in range(20)]
    outs = await asyncio.gather(*(b.submit(x) for x in xs))
    await b.stop()
    assert sum(fake.batches) == 20 and max(fake.batches) <= 8
    assert len(fake.batches) <= 4  # 20 single-segment requests in 3 batches (+1 if the clock is unkind)
    for i, o in enumerate(outs):  # each request gets its own rows back
        assert o.shape == (1, C.EMBED_DIM) and np.allclose(o[0, 0], i + 1)


async def test_batcher_lone_request_waits_at_most_max_wait() -> None:
    fake = FakeBackend()
    mv = _mv()
    b = MicroBatcher(lambda x: fake.embed(mv, x), "ecg", max_batch=64, max_wait_s=0.02)
    b.start()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await b.submit(np.zeros((2, 1, 16), np.float32))
    assert loop.time() - t0 < 0.5
    await b.stop()
    assert fake.batches == [2]


async def test_batcher_drops_requests_whose_client_left_and_bounds_the_queue() -> None:
    fake = FakeBackend(delay_s=0.2)
    mv = _mv()
    b = MicroBatcher(
        lambda x: fake.embed(mv, x), "ecg", max_batch=4, max_wait_s=0.001, max_queued=6, concurrency=1
    )
    b.start()
    first = asyncio.create_task(b.submit(np.zeros((4, 1, 16), np.float32)))  # occupies the backend
    await asyncio.sleep(0.05)
    gone = asyncio.create_task(b.submit(np.ones((2, 1, 16), np.float32)))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await b.submit(np.ones((5, 1, 16), np.float32))  # 2 waiting + 5 > 6 (the 4 in flight left the queue)
    gone.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.sleep(0.3)
    await b.stop()
    assert 2 not in fake.batches  # the cancelled request never reached the backend


# ------------------------------------------------------------------------------------ Redis
@pytest.fixture
def redis_db():
    import redis

    r = redis.Redis.from_url(REDIS)
    r.ping()  # the real server (.ci/run starts it); a failure here is a setup error, not a skip
    r.flushdb()
    yield r
    r.flushdb()


def test_redis_cache_stores_float32_under_versioned_keys(repo, redis_db) -> None:
    from fastapi.testclient import TestClient

    x = raw_segments("ecg", 2, 360.0, seed=5)
    body = {"modality": "ecg", "fs": 360, "segments": x.tolist()}
    with TestClient(create_app(Settings(repo=repo, redis_url=REDIS))) as c:
        a = c.post("/v1/embed", json=body).json()
        b = c.post("/v1/embed", json=body).json()
        metrics = c.get("/metrics").text
    assert [q["cached"] for q in a["quality"]] == [False, False]
    assert [q["cached"] for q in b["quality"]] == [True, True]
    keys = sorted(k.decode() for k in redis_db.keys("pulsefm:emb:*"))
    assert len(keys) == 2
    mv = a["model"]
    assert all(f":ecg_encoder:v1:{mv['preprocess_version']}:{mv['encoder_sha256']}:" in k for k in keys)
    expected = cache_key("ecg_encoder", 1, mv["preprocess_version"], mv["encoder_sha256"], 360.0, x[0])
    assert expected in keys
    raw = redis_db.get(expected)
    np.testing.assert_allclose(np.frombuffer(raw, np.float32), a["embeddings"][0], atol=1e-6)
    assert 0 < redis_db.ttl(expected) <= Settings().cache_ttl_s
    assert 'pulsefm_cache_hits_total{cache="redis"}' in metrics


def test_redis_down_degrades_to_no_cache(repo) -> None:
    from fastapi.testclient import TestClient

    from service.triton_local import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    x = raw_segments("ecg", 1, 128.0).tolist()
    with TestClient(create_app(Settings(repo=repo, redis_url=dead))) as c:
        for _ in range(2):
            r = c.post("/v1/embed", json={"modality": "ecg", "fs": 128, "segments": x})
            assert r.status_code == 200 and r.json()["quality"][0]["cached"] is False
        text = c.get("/metrics").text
    line = next(
        ln for ln in text.splitlines() if ln.startswith('pulsefm_cache_errors_total{cache="redis",op="get"}')
    )
    assert float(line.split()[-1]) >= 2


async def test_redis_cache_direct_roundtrip(redis_db) -> None:
    cache = RedisCache(REDIS, ttl_s=60)
    await cache.set_many({"pulsefm:emb:test": np.arange(4, dtype=np.float32).tobytes()})
    got = await cache.get_many(["pulsefm:emb:test", "pulsefm:emb:none"])
    await cache.close()
    assert got[1] is None and got[0] is not None
    assert np.array_equal(np.frombuffer(got[0], np.float32), np.arange(4))


# ---------------------------------------------------------------------------------- hot swap
def test_hot_version_swap_under_concurrent_requests_loses_nothing(tmp_path) -> None:
    repo = build_repo(tmp_path)
    x = raw_segments("ecg", 2, 128.0)
    body = {"modality": "ecg", "fs": 128, "segments": x.tolist()}
    art2 = make_artifact("ecg", seed=11)
    pt2 = tmp_path / "ecg2.pt"
    torch.save(art2, pt2)

    async def run(url: str) -> tuple[list[int], list[int], list[int]]:
        statuses: list[int] = []
        versions: list[int] = []
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def one(i: int) -> None:
                payload = dict(body)
                payload["segments"] = (x + i * 1e-3).tolist()  # distinct inputs: no cache hits
                r = await client.post("/v1/embed", json=payload)
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append(r.json()["model"]["version"])

            async def swap() -> None:
                await asyncio.sleep(0.3)
                await asyncio.to_thread(publish, repo, pt2)  # a retraining job publishes v2
                r = await client.post("/v1/admin/reload", headers={"X-API-Key": "job"})
                assert r.status_code == 200

            tasks = [one(i) for i in range(60)]
            await asyncio.gather(swap(), *tasks)
            after = await client.post("/v1/embed", json=body)
            pinned = await client.post("/v1/embed", json=body | {"model_version": 1})
            return statuses, versions, [after.json()["model"]["version"], pinned.json()["model"]["version"]]

    # 60 requests at once: admit them all (the default bound, 32, would answer some with 429)
    settings = Settings(repo=repo, admin_keys="job", max_inflight_requests=64)
    with ServerThread(create_app(settings)) as server:
        statuses, versions, (after, pinned) = asyncio.run(run(server.url))
    assert statuses == [200] * 60  # nothing lost, nothing failed
    assert set(versions) <= {1, 2}
    assert after == 2 and pinned == 1  # latest 2 versions served: v1 still answers when pinned


# ---------------------------------------------------------------------------------- Triton
@pytest.mark.triton
def test_triton_backend_equals_onnxruntime_backend(repo, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from service.triton_local import TritonServer, setup

    setup()
    x = raw_segments("ppg", 3, 64.0, seed=2)
    body = {"modality": "ppg", "fs": 64, "segments": x.tolist()}
    with TestClient(create_app(Settings(repo=repo))) as c:
        ref = c.post("/v1/predict", json=body).json()
    trepo = tmp_path / "repo"
    shutil.copytree(repo, trepo)
    with TritonServer(trepo, tmp_path / "work") as server:
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            s = Settings(repo=trepo, backend="triton", triton_url=url, triton_protocol=protocol)
            with TestClient(create_app(s)) as c:
                assert c.get("/readyz").json()["backend"] == "triton"
                got = c.post("/v1/predict", json=body).json()
            for a, b in zip(got["predictions"], ref["predictions"], strict=True):
                for target in a:
                    assert abs(a[target]["value"] - b[target]["value"]) < 1e-3
        server.stop()
        s = Settings(
            repo=trepo, backend="triton", triton_url=server.http_url, triton_protocol="http", startup_wait_s=1
        )
        with TestClient(create_app(s), raise_server_exceptions=False) as c:
            r = c.get("/readyz")
            assert r.status_code == 503 and r.json()["backend_ok"] is False
            r = c.post("/v1/embed", json=body)
            assert r.status_code == 503 and r.headers["Retry-After"]


def test_client_that_leaves_is_dropped_from_the_queue(repo) -> None:
    """A client that disconnects while queued never reaches the backend (real server, real socket)."""
    fake = FakeBackend(max_batch=64, delay_s=1.0)
    x = raw_segments("ecg", 3, 128.0)

    async def run(url: str) -> None:
        fake.batches.clear()  # the start-up warm-up ran one zero segment per model through it
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            body = {"modality": "ecg", "fs": 128}
            # two one-segment requests occupy both in-flight batches for ~1 s
            busy = []
            for i in range(2):  # spaced beyond the 2 ms batching window: two separate batches
                busy.append(
                    asyncio.create_task(
                        client.post("/v1/embed", json=body | {"segments": x[i : i + 1].tolist()})
                    )
                )
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            with pytest.raises(httpx.TimeoutException):  # this one waits in the queue, then gives up
                await client.post("/v1/embed", json=body | {"segments": x.tolist()}, timeout=0.3)
            assert all(r.status_code == 200 for r in await asyncio.gather(*busy))
            await asyncio.sleep(1.2)

    with ServerThread(create_app(Settings(repo=repo, lru_entries=1), backend=fake)) as server:
        asyncio.run(run(server.url))
        text = httpx.get(server.url + "/metrics").text
    assert 3 not in fake.batches and sorted(fake.batches) == [1, 1]
    dropped = [
        ln for ln in text.splitlines() if ln.startswith('pulsefm_dropped_segments_total{modality="ecg"}')
    ]
    assert dropped and float(dropped[0].split()[-1]) >= 3
