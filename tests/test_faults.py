"""Load and fault tests on loopback, bounded in time: overload, Redis loss, Triton loss, API fuzzing."""

from __future__ import annotations

import asyncio
import subprocess
import time

import httpx
import hypothesis
import numpy as np
import pytest
import schemathesis

from service.app import create_app
from service.settings import Settings
from service.triton_local import free_port
from tests.gateway_helpers import ServerThread, build_repo, npy, raw_segments


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("faults"))


async def _hammer(
    url: str, bodies: list[bytes], concurrency: int, seconds: float, params: dict
) -> tuple[dict, list]:
    codes: dict[int, int] = {}
    lat: list[float] = []
    unexpected: list[str] = []
    stop = time.perf_counter() + seconds
    headers = {"Content-Type": "application/x-npy", "Accept": "application/x-npy"}
    async with httpx.AsyncClient(
        base_url=url, timeout=30, limits=httpx.Limits(max_connections=concurrency)
    ) as c:

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                r = await c.post("/v1/embed", content=bodies[i % len(bodies)], headers=headers, params=params)
                lat.append(time.perf_counter() - t0)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code not in (200, 429):
                    unexpected.append(f"{r.status_code} {r.text[:300]}")
                if r.status_code == 429:
                    assert r.headers["Retry-After"]
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    assert not unexpected, unexpected[:3]
    return codes, lat


def test_overload_answers_429_fast_not_timeouts(repo) -> None:
    x = raw_segments("ppg", 32, 64.0)
    bodies = [npy(x[i : i + 4] + np.float32(k * 1e-3)) for k in range(8) for i in range(0, 32, 4)]
    from benchmarks.gateway import gateway

    # the gateway in its own process (as deployed), so that the load generator does not starve it
    with gateway(repo, PULSEFM_MAX_INFLIGHT_SEGMENTS="16", PULSEFM_LRU_ENTRIES="1") as url:
        # capacity first: one client at a time
        base, _ = asyncio.run(_hammer(url, bodies, 1, 2.0, {"modality": "ppg", "fs": 64}))
        # then far more clients than are admitted
        codes, lat = asyncio.run(_hammer(url, bodies, 32, 4.0, {"modality": "ppg", "fs": 64}))
    assert set(base) == {200}
    assert set(codes) <= {200, 429} and codes.get(429, 0) > 0 and codes.get(200, 0) > 0
    p99 = float(np.percentile(lat, 99))
    # bounded: at most 16 segments are admitted, so waits stay far below the 30 s client timeout
    # (measured here: p99 ~1.7 s with 32 clients on 2 shared cores, against ~25 ms for one client)
    assert p99 < 5.0, (p99, codes)


def _redis(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        if (
            subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout.strip()
            == b"PONG"
        ):
            return proc
        time.sleep(0.05)
    raise RuntimeError("redis did not start")


def test_redis_killed_mid_load_then_back(repo) -> None:
    port = free_port()
    redis_proc = _redis(port)
    x = raw_segments("ecg", 8, 128.0)
    body = {"modality": "ecg", "fs": 128, "segments": x[:2].tolist()}
    settings = Settings(
        repo=repo, redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.2, cache_breaker_cooldown_s=1.0
    )
    try:
        with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.post("/v1/embed", json=body).json()["quality"][0]["cached"] is False
            assert c.post("/v1/embed", json=body).json()["quality"][0]["cached"] is True
            redis_proc.kill()
            redis_proc.wait()
            for _ in range(5):  # served without the cache, never an error
                r = c.post("/v1/embed", json=body)
                assert r.status_code == 200 and r.json()["quality"][0]["cached"] is False
            text = c.get("/metrics").text
            errors = _total(text, "pulsefm_cache_errors_total{")
            bypassed = _total(text, "pulsefm_cache_bypassed_total{")
            # three failures in a row open the breaker; the rest of the calls skip Redis
            assert errors >= 3 and bypassed >= 1 and errors + bypassed >= 10, (errors, bypassed)
            assert 'pulsefm_cache_breaker_open{cache="redis"} 1.0' in text
            redis_proc = _redis(port)  # Redis returns (empty: it keeps nothing on disk)
            time.sleep(1.1)  # the breaker's cool-down: the next call tries Redis again
            c.post("/v1/embed", json=body)  # repopulates
            r = c.post("/v1/embed", json=body)
            assert r.status_code == 200 and r.json()["quality"][0]["cached"] is True
    finally:
        redis_proc.kill()


def _total(metrics: str, prefix: str) -> float:
    return sum(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith(prefix))


@pytest.mark.triton
def test_triton_killed_gives_503_then_recovers(repo, tmp_path) -> None:
    from service.triton_local import TritonServer, setup

    setup()
    http_port, grpc_port = free_port(), free_port()
    body = {"modality": "ecg", "fs": 128, "segments": raw_segments("ecg", 1, 128.0).tolist()}
    triton = TritonServer(repo, tmp_path / "t1", http_port, grpc_port).start()
    settings = Settings(repo=repo, backend="triton", triton_url=f"127.0.0.1:{grpc_port}", lru_entries=1)
    try:
        with ServerThread(create_app(settings)) as server, httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/readyz").status_code == 200
            assert c.post("/v1/embed", json=body).status_code == 200
            triton.stop()
            assert c.get("/readyz").status_code == 503
            body2 = dict(body, segments=(np.asarray(body["segments"]) * 1.01).tolist())  # not cached
            r = c.post("/v1/embed", json=body2)
            assert (
                r.status_code == 503
                and r.json()["error"] == "backend_unavailable"
                and r.headers["Retry-After"]
            )
            triton = TritonServer(repo, tmp_path / "t2", http_port, grpc_port).start()
            deadline = time.monotonic() + 30
            while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert c.get("/readyz").status_code == 200
            assert c.post("/v1/embed", json=body2).status_code == 200
    finally:
        triton.stop()


def test_schemathesis_finds_no_server_error(repo) -> None:
    """Requests generated from the OpenAPI spec (JSON, .npy and raw bodies, odd parameters): never a 5xx."""
    failures: list[str] = []
    with ServerThread(create_app(Settings(repo=repo))) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operations = [r.ok() for r in schema.get_all_operations()]  # type: ignore[union-attr]
        assert any(op.path == "/v1/embed" for op in operations)
        for op in operations:

            @hypothesis.given(case=op.as_strategy())
            @hypothesis.settings(
                max_examples=25,
                deadline=None,
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                r = case.call(base_url=server.url, timeout=30)
                if r.status_code >= 500:
                    failures.append(f"{case.method} {case.path}: {r.status_code} {r.text[:200]}")

            run()
    assert not failures, failures


def _versions(c: httpx.Client) -> tuple[set[tuple[str, int]], dict[tuple[str, int], str]]:
    doc = c.get("/v1/models").json()
    served = {(m["modality"], m["version"]) for m in doc["models"]}
    return served, {(f["modality"], f["version"]): f["reason"] for f in doc["failed"]}


def test_bad_versions_never_take_the_gateway_down(tmp_path) -> None:
    """A truncated model.onnx, one changed in place, one that breaks the contract and one whose
    weights are NaN, each in a new
    version folder, then a restart: every good version serves within 10 s, each bad one is listed
    with its reason and counted, and a repaired file is picked up by the retry loop."""
    import json
    import shutil

    import onnx

    from pulsefm import contract as C

    repo = build_repo(tmp_path)  # ppg v1, ecg v1
    for mod, versions in (("ecg", (2, 3)), ("ppg", (2, 3))):  # copies of v1: valid versions, no export
        for kind in ("encoder", "probes"):
            model_dir = repo / C.model_name(mod, kind)
            for v in versions:
                shutil.copytree(model_dir / "1", model_dir / str(v))
            cfg = model_dir / "config.pbtxt"
            cfg.write_text(cfg.read_text().replace("num_versions: 2", "num_versions: 3"))
    ecg2 = repo / "ecg_encoder" / "2" / C.MODEL_FILE
    good_ecg2 = ecg2.read_bytes()
    ecg2.write_bytes(good_ecg2[: len(good_ecg2) // 2])  # truncated: checksum differs from the card
    ecg3 = repo / "ecg_encoder" / "3"
    (ecg3 / C.MODEL_FILE).write_bytes((ecg3 / C.MODEL_FILE).read_bytes()[:-1] + b"\0")  # changed in place
    # ppg v2: a valid ONNX file whose input is not the contract's, with a card that matches its bytes
    ppg2 = repo / "ppg_encoder" / "2"
    model = onnx.load(str(ppg2 / C.MODEL_FILE))
    model.graph.input[0].name = "wrong_name"
    for node in model.graph.node:
        node.input[:] = ["wrong_name" if i == C.ENCODER_INPUT else i for i in node.input]
    onnx.save(model, str(ppg2 / C.MODEL_FILE))
    card = json.loads((ppg2 / C.CARD_FILE).read_text())
    card["sha256"] = __import__("hashlib").sha256((ppg2 / C.MODEL_FILE).read_bytes()).hexdigest()
    (ppg2 / C.CARD_FILE).write_text(json.dumps(card))
    # ppg v3: well-formed, contract-true, checksum-true, but its weights are NaN (caught at warm-up)
    ppg3 = repo / "ppg_encoder" / "3"
    model = onnx.load(str(ppg3 / C.MODEL_FILE))
    init = next(
        t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1
    )
    weights = onnx.numpy_helper.to_array(init).copy()
    weights[...] = np.nan
    init.CopyFrom(onnx.numpy_helper.from_array(weights, init.name))
    onnx.save(model, str(ppg3 / C.MODEL_FILE))
    card = json.loads((ppg3 / C.CARD_FILE).read_text())
    card["sha256"] = __import__("hashlib").sha256((ppg3 / C.MODEL_FILE).read_bytes()).hexdigest()
    (ppg3 / C.CARD_FILE).write_text(json.dumps(card))

    settings = Settings(repo=repo, retry_failed_s=1.0)
    t0 = time.monotonic()
    with (
        ServerThread(create_app(settings), settings) as server,
        httpx.Client(base_url=server.url, timeout=30) as c,
    ):
        while c.get("/readyz").status_code != 200 and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        assert time.monotonic() - t0 < 10
        served, failed = _versions(c)
        assert served == {("ecg", 1), ("ppg", 1)}, served
        assert failed == {
            ("ecg", 2): "checksum",
            ("ecg", 3): "checksum",
            ("ppg", 2): "contract",
            ("ppg", 3): "warmup",
        }, failed
        for mod, fs, x in (
            ("ecg", 128, raw_segments("ecg", 1, 128.0)),
            ("ppg", 64, raw_segments("ppg", 1, 64.0)),
        ):
            r = c.post("/v1/embed", json={"modality": mod, "fs": fs, "segments": x.tolist()})
            assert r.status_code == 200 and r.json()["model"]["version"] == 1, r.text
        metrics = c.get("/metrics").text
        assert 'pulsefm_model_load_failures_total{modality="ecg",reason="checksum"}' in metrics
        assert "pulsefm_models_failed 4.0" in metrics
        ecg2.write_bytes(good_ecg2)  # the file is repaired: the retry loop serves it
        deadline = time.monotonic() + 10
        while ("ecg", 2) not in _versions(c)[0] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ("ecg", 2) in _versions(c)[0]
    shutil.rmtree(tmp_path / "repo")


def test_frozen_redis_costs_a_few_budgets_not_every_request(repo) -> None:
    """Redis stopped with SIGSTOP (accepts connections, never answers): the breaker opens after a
    few timeouts and requests are served without the cache at normal latency."""
    import signal

    port = free_port()
    redis_proc = _redis(port)
    x = raw_segments("ecg", 1, 128.0)
    settings = Settings(repo=repo, redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.1)
    try:
        with (
            ServerThread(create_app(settings), settings) as server,
            httpx.Client(base_url=server.url, timeout=30) as c,
        ):
            body = {"modality": "ecg", "fs": 128, "segments": x.tolist()}
            c.post("/v1/embed", json=body)
            t0 = time.perf_counter()
            assert c.post("/v1/embed", json=body).json()["quality"][0]["cached"] is True
            normal = time.perf_counter() - t0
            redis_proc.send_signal(signal.SIGSTOP)
            lat = []
            for i in range(20):
                t0 = time.perf_counter()
                r = c.post("/v1/embed", json=body | {"segments": (x + i * 1e-3).tolist()})
                lat.append(time.perf_counter() - t0)
                assert r.status_code == 200
            text = c.get("/metrics").text
    finally:
        redis_proc.send_signal(signal.SIGCONT)
        redis_proc.kill()
    # the first calls each wait one budget (0.1 s get + 0.1 s set); then the breaker bypasses Redis
    assert sum(lat[:3]) < 1.0 and float(np.median(lat[5:])) < normal + 0.1, (lat, normal)
    assert 'pulsefm_cache_breaker_open{cache="redis"} 1.0' in text


def test_bad_cache_values_are_misses_counted_and_overwritten(repo) -> None:
    import redis

    from pulsefm import contract as C
    from service.cache import cache_key
    from service.registry import scan

    r = redis.Redis.from_url("redis://127.0.0.1:6379/14")
    r.ping()  # the real server (.ci/run starts it)
    r.flushdb()
    x = raw_segments("ecg", 2, 128.0, seed=9)
    mv = scan(repo)["ecg"][1]
    keys = [
        cache_key(C.model_name("ecg", "encoder"), 1, mv.preprocess_version, mv.encoder_sha256, 128.0, s)
        for s in x
    ]
    r.set(keys[0], b"short")
    r.set(keys[1], np.full(C.EMBED_DIM, np.nan, dtype=np.float32).tobytes())
    settings = Settings(repo=repo, redis_url="redis://127.0.0.1:6379/14")
    with (
        ServerThread(create_app(settings), settings) as server,
        httpx.Client(base_url=server.url, timeout=30) as c,
    ):
        body = {"modality": "ecg", "fs": 128, "segments": x.tolist()}
        first = c.post("/v1/embed", json=body).json()
        second = c.post("/v1/embed", json=body).json()
        text = c.get("/metrics").text
    assert [q["cached"] for q in first["quality"]] == [False, False]
    assert [q["cached"] for q in second["quality"]] == [True, True]
    assert np.isfinite(np.asarray(second["embeddings"])).all()
    assert all(len(r.get(k) or b"") == 4 * C.EMBED_DIM for k in keys)  # overwritten with good vectors
    assert 'pulsefm_cache_errors_total{cache="redis",op="invalid"}' in text
    r.flushdb()
