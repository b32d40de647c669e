"""The gateway end to end (real app, lifespan, onnxruntime backend), its validation and its cache."""

from __future__ import annotations

import asyncio
import io
import json
import os

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pulsefm import contract as C
from pulsefm.preprocess import spec_for
from service.app import create_app
from service.settings import Settings
from service.signals import preprocess
from tests.gateway_helpers import build_repo, npy, raw_segments
from training.export import ort_session


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("gw"))


@pytest.fixture(scope="module")
def client(repo):
    with TestClient(create_app(Settings(repo=repo))) as c:
        yield c


def test_health_ready_models(client) -> None:
    assert client.get("/healthz").json() == {"status": "alive", "worker": os.getpid()}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"]
    models = client.get("/v1/models").json()
    assert {(m["modality"], m["version"]) for m in models["models"]} == {("ppg", 1), ("ecg", 1)}
    assert models["models"][0]["encoder"]["sampling_rate_hz"] in (64.0, 128.0)


@pytest.mark.parametrize(("modality", "fs"), [("ecg", 500.0), ("ppg", 64.0), ("ppg", 100.0)])
def test_embed_equals_training_preprocessing_plus_onnx(client, repo, modality, fs) -> None:
    x = raw_segments(modality, 3, fs)
    r = client.post("/v1/embed", json={"modality": modality, "fs": fs, "segments": x.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.asarray(body["embeddings"], dtype=np.float32)
    assert got.shape == (3, C.EMBED_DIM) and body["model"]["version"] == 1
    prep = preprocess(x, fs, spec_for(modality))
    ref = ort_session(repo / f"{modality}_encoder" / "1" / C.MODEL_FILE).run(
        None, {C.ENCODER_INPUT: prep.data}
    )[0]
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # the binary form gives the same numbers
    rb = client.post(
        "/v1/embed",
        content=npy(x),
        params={"modality": modality, "fs": fs},
        headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"},
    )
    assert rb.status_code == 200 and rb.headers["X-Model-Version"] == "1"
    np.testing.assert_allclose(np.load(io.BytesIO(rb.content)), got, atol=1e-6)


def test_raw_float32_with_shape_header(client) -> None:
    x = raw_segments("ecg", 2, 128.0)
    r = client.post(
        "/v1/embed",
        content=x.astype("<f4").tobytes(),
        params={"modality": "ecg", "fs": 128},
        headers={"Content-Type": "application/octet-stream", "X-Shape": "2,1,3840"},
    )
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 2


def test_predict_has_units_version_and_aggregate(client) -> None:
    x = raw_segments("ppg", 2, 64.0)
    r = client.post(
        "/v1/predict", json={"modality": "ppg", "fs": 64, "segments": x.tolist(), "quality": "full"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["version"] == 1 and body["model"]["preprocess_version"].startswith("ppg-r1-")
    assert set(body["predictions"][0]) == {"age", "sex"}
    assert body["predictions"][0]["age"]["units"] == "years"
    assert 0.0 <= body["predictions"][0]["sex"]["value"] <= 1.0
    assert body["aggregate"]["age"]["kind"] == "regression"
    q = body["quality"][0]
    assert q["heart_rate_bpm"] is not None and 40 < q["heart_rate_bpm"] < 140  # quality=full measures it


def _bad_cases() -> list[tuple[str, dict | bytes, dict, str]]:
    good = raw_segments("ecg", 1, 128.0)[0]
    nan = good.copy()
    nan[0, 100:200] = np.nan
    flat = np.zeros_like(good)
    clipped = np.clip(good, None, np.percentile(good, 60))
    return [
        ("shape", {"modality": "ecg", "fs": 128, "segments": [[[[1.0]]]]}, {}, "shape"),
        (
            "channels",
            {"modality": "ecg", "fs": 128, "segments": np.zeros((1, 2, 3840)).tolist()},
            {},
            "channels",
        ),
        ("short", {"modality": "ecg", "fs": 128, "segments": [good[:, :1000].tolist()]}, {}, "too_short"),
        (
            "stride",
            {"modality": "ecg", "fs": 128, "segments": [good.tolist()], "stride_s": 0.01},
            {},
            "stride_s",
        ),
        (
            "pick",
            {"modality": "ecg", "fs": 128, "segments": [good.tolist()], "channels": [3]},
            {},
            "channels",
        ),
        (
            "nan",
            {
                "modality": "ecg",
                "fs": 128,
                "segments": [json.loads(json.dumps(nan.tolist()).replace("NaN", "null"))],
            },
            {},
            "nonfinite",
        ),
        ("flat", {"modality": "ecg", "fs": 128, "segments": [flat.tolist()]}, {}, "flat_line"),
        ("clipping", {"modality": "ecg", "fs": 128, "segments": [clipped.tolist()]}, {}, "clipping"),
        ("strings", {"modality": "ecg", "fs": 128, "segments": [["a", "b"]]}, {}, "dtype"),
        ("modality", {"modality": "eeg", "fs": 128, "segments": [good.tolist()]}, {}, "modality"),
        ("fs", {"modality": "ecg", "fs": 5, "segments": [good.tolist()]}, {}, "fs"),
        ("fs-text", {"modality": "ecg", "fs": "fast", "segments": [good.tolist()]}, {}, "fs"),
        ("json", b"{not json", {"Content-Type": "application/json"}, "json"),
        (
            "version",
            {"modality": "ecg", "fs": 128, "segments": [good.tolist()], "model_version": "x"},
            {},
            "model_version",
        ),
        (
            "int-npy",
            npy(np.zeros((1, 1, 3840), dtype=np.int32)),
            {"Content-Type": "application/x-npy"},
            "dtype",
        ),
        ("nan-npy", npy(nan[None]), {"Content-Type": "application/x-npy"}, "nonfinite"),
        ("bad-npy", b"\x93NUMPY garbage", {"Content-Type": "application/x-npy"}, "npy"),
        ("raw-no-shape", good.tobytes(), {"Content-Type": "application/octet-stream"}, "shape"),
        ("content-type", b"hello", {"Content-Type": "text/plain"}, "content_type"),
    ]


@pytest.mark.parametrize(
    ("name", "body", "headers", "reason"), _bad_cases(), ids=[c[0] for c in _bad_cases()]
)
def test_bad_input_is_a_clear_422(client, name, body, headers, reason) -> None:
    params = {"modality": "ecg", "fs": 128}
    if isinstance(body, bytes):
        r = client.post("/v1/embed", content=body, headers=headers, params=params)
    else:
        r = client.post("/v1/embed", json=body)
    assert r.status_code == 422, (name, r.status_code, r.text)
    doc = r.json()
    assert doc["error"] == "validation"
    assert reason in {p["reason"] for p in doc["problems"]}, doc


def test_payload_over_limit_is_413(repo) -> None:
    with TestClient(create_app(Settings(repo=repo, max_body_bytes=10_000))) as c:
        r = c.post("/v1/embed", content=b"0" * 20_000, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_unknown_version_is_404_and_pinned_version_works(client) -> None:
    x = raw_segments("ecg", 1, 128.0)
    r = client.post(
        "/v1/embed", json={"modality": "ecg", "fs": 128, "segments": x.tolist(), "model_version": 9}
    )
    assert r.status_code == 404 and "served: [1]" in r.json()["detail"]
    r = client.post(
        "/v1/embed", json={"modality": "ecg", "fs": 128, "segments": x.tolist(), "model_version": 1}
    )
    assert r.status_code == 200


def test_api_keys(repo) -> None:
    x = raw_segments("ecg", 1, 128.0).tolist()
    with TestClient(create_app(Settings(repo=repo, api_keys="k1,k2", admin_keys="root"))) as c:
        body = {"modality": "ecg", "fs": 128, "segments": x}
        assert c.post("/v1/embed", json=body).status_code == 401
        assert c.post("/v1/embed", json=body, headers={"X-API-Key": "nope"}).status_code == 401
        assert c.post("/v1/embed", json=body, headers={"X-API-Key": "k2"}).status_code == 200
        assert c.post("/v1/admin/reload", headers={"X-API-Key": "k1"}).status_code == 403  # no admin role
        assert c.post("/v1/admin/reload", headers={"X-API-Key": "nope"}).status_code == 401
        assert c.post("/v1/admin/reload").status_code == 401
        assert c.post("/v1/admin/reload", headers={"X-API-Key": "root"}).status_code == 200
        assert c.get("/v1/models").status_code == 401  # cards and checksums need a key too
        assert c.get("/v1/models", headers={"X-API-Key": "k1"}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open
        assert c.get("/readyz").status_code == 200


def test_metrics_exported(client) -> None:
    x = raw_segments("ecg", 1, 128.0).tolist()
    client.post("/v1/embed", json={"modality": "ecg", "fs": 128, "segments": x})
    text = client.get("/metrics").text
    for name in (
        "pulsefm_stage_seconds_bucket",
        "pulsefm_batch_size_bucket",
        "pulsefm_cache_hits_total",
        "pulsefm_request_failures_total",
        "pulsefm_model_info",
    ):
        assert name in text, name
    assert 'stage="queue_wait"' in text and 'stage="inference"' in text and 'stage="validation"' in text


def test_openapi_documents_both_body_forms(client) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/embed"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-npy", "application/octet-stream"} <= set(content)
    assert "422" in spec["paths"]["/v1/embed"]["post"]["responses"]


def test_lru_cache_hits_return_identical_embeddings(client) -> None:
    x = raw_segments("ppg", 2, 64.0, seed=3).tolist()
    a = client.post("/v1/embed", json={"modality": "ppg", "fs": 64, "segments": x}).json()
    b = client.post("/v1/embed", json={"modality": "ppg", "fs": 64, "segments": x}).json()
    assert [q["cached"] for q in a["quality"]] == [False, False]
    assert [q["cached"] for q in b["quality"]] == [True, True]
    assert a["embeddings"] == b["embeddings"]


def test_lru_entries_zero_disables_the_cache(repo) -> None:
    """PULSEFM_LRU_ENTRIES=0: no lookup, no write (and no key hashing); answers stay the same."""
    from service.metrics import CACHE_HITS, CACHE_MISSES

    x = raw_segments("ppg", 2, 64.0, seed=4).tolist()
    body = {"modality": "ppg", "fs": 64, "segments": x}
    with TestClient(create_app(Settings(repo=repo, lru_entries=0))) as c:
        before = CACHE_HITS.labels("lru")._value.get(), CACHE_MISSES.labels("lru")._value.get()
        a, b = (c.post("/v1/embed", json=body).json() for _ in range(2))
        after = CACHE_HITS.labels("lru")._value.get(), CACHE_MISSES.labels("lru")._value.get()
        assert c.app.state.pulse.cache.data == {}  # type: ignore[attr-defined]
    assert [q["cached"] for q in a["quality"] + b["quality"]] == [False] * 4
    assert before == after  # not consulted at all
    np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-6)


def test_client_sync_and_async(repo) -> None:
    from service.client import AsyncPulseClient, PulseClient, PulseError
    from tests.gateway_helpers import ServerThread

    x = raw_segments("ecg", 2, 250.0)
    with ServerThread(create_app(Settings(repo=repo))) as server:
        with PulseClient(server.url) as c:
            assert c.ready()
            emb = c.embed(x, "ecg", 250.0)
            assert emb.shape == (2, 256)
            out = c.predict(x, "ecg", 250.0)
            assert out["model"]["version"] == 1 and len(out["predictions"]) == 2
            with pytest.raises(PulseError) as err:
                c.embed(x[:, :, :100], "ecg", 250.0)
            assert err.value.status == 422

        async def run() -> np.ndarray:
            async with AsyncPulseClient(server.url) as ac:
                return await ac.embed(x, "ecg", 250.0)

        np.testing.assert_allclose(asyncio.run(run()), emb, atol=1e-6)


@pytest.mark.parametrize(("modality", "fs"), [("ppg", 64.0), ("ppg", 100.0), ("ecg", 360.0)])
def test_gateway_preprocessing_is_the_training_pipeline(modality, fs) -> None:
    from pulsefm.pipeline import process_array

    spec = spec_for(modality)
    x = raw_segments(modality, 3, fs)
    got = preprocess(x, fs, spec).data
    ref = np.stack([process_array(s, fs, spec, check=False).data[0] for s in x])
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_full_quality_with_some_segments_cached_embeds_the_right_rows(client, repo) -> None:
    """quality=full preprocesses every segment but embeds only the misses: their rows must line up."""
    x = raw_segments("ppg", 3, 64.0, seed=11)
    body = {"modality": "ppg", "fs": 64}
    client.post("/v1/embed", json=body | {"segments": x[[0, 2]].tolist()})  # caches two of three
    mixed = client.post("/v1/embed", json=body | {"segments": x.tolist(), "quality": "full"}).json()
    assert [q["cached"] for q in mixed["quality"]] == [True, False, True]
    ref = ort_session(repo / "ppg_encoder" / "1" / C.MODEL_FILE).run(
        None, {C.ENCODER_INPUT: preprocess(x, 64.0, spec_for("ppg")).data}
    )[0]
    np.testing.assert_allclose(np.asarray(mixed["embeddings"]), ref, atol=1e-4)  # every row its own
    assert all(q["heart_rate_bpm"] is not None for q in mixed["quality"])


def test_no_route_or_dependency_runs_in_the_thread_pool(tmp_path) -> None:
    """FastAPI runs a plain `def` endpoint or dependency in its thread pool: a thread hop per
    request (and a wait for the GIL on the way back). Every one on the app must be `async`."""
    import inspect

    from fastapi.routing import APIRoute

    def is_async(call: object) -> bool:
        if inspect.iscoroutinefunction(call):
            return True
        # a dependency object (APIKeyHeader): its class's method
        return any(inspect.iscoroutinefunction(k.__dict__.get("__call__")) for k in type(call).__mro__)

    def sync_calls(dependant) -> list[str]:
        found = [] if dependant.call is None or is_async(dependant.call) else [repr(dependant.call)]
        for sub in dependant.dependencies:
            found += sync_calls(sub)
        return found

    def api_routes(routes: list) -> list[APIRoute]:
        found: list[APIRoute] = []
        for r in routes:
            if isinstance(r, APIRoute):
                found.append(r)
            elif hasattr(r, "original_router"):  # an included router (FastAPI >= 0.16x)
                found += api_routes(r.original_router.routes)
        return found

    routes = api_routes(create_app(Settings(repo=tmp_path)).routes)
    assert {r.name for r in routes} >= {"embed", "predict", "healthz", "readyz"}
    assert {r.name: sync_calls(r.dependant) for r in routes if sync_calls(r.dependant)} == {}
