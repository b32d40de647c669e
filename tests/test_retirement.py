"""Graceful retirement: a version that leaves the serving policy is still answered to clients that
pin it, with Deprecation / Sunset headers and its callers counted, until its grace period ends;
then 410 Gone naming the served versions. Unpinned traffic moves to the new version at once."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.gateway_helpers import build_repo, raw_segments
from tests.test_export import make_artifact, probes_doc
from training.publish import publish


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """ppg v1, then v2 published with keep=1: v1 leaves the policy."""
    root = tmp_path_factory.mktemp("retire")
    repo = build_repo(root)
    art = make_artifact("ppg", 1)
    torch.save(art, root / "ppg-v2.pt")
    publish(repo, root / "ppg-v2.pt", probes_doc("ppg", art, root / "ppg-v2-probes.json"), keep=1)
    return repo


BODY = {"modality": "ppg", "fs": 64, "segments": raw_segments("ppg", 1, 64.0).tolist()}


def test_a_retiring_version_is_answered_with_deprecation_headers(repo) -> None:
    with TestClient(create_app(Settings(repo=repo, retire_grace_s=3600, api_keys="key-a,key-b"))) as c:
        latest = c.post("/v1/embed", json=BODY, headers={"X-API-Key": "key-a"})
        assert latest.headers["X-Model-Version"] == "2" and "Deprecation" not in latest.headers
        old = c.post("/v1/embed", json=BODY | {"model_version": 1}, headers={"X-API-Key": "key-a"})
        assert old.status_code == 200 and old.headers["X-Model-Version"] == "1"
        assert old.headers["Deprecation"] == "true" and old.headers["Sunset"].endswith("GMT")
        models = c.get("/v1/models", headers={"X-API-Key": "key-b"}).json()
        (entry,) = [r for r in models["retiring"] if r["modality"] == "ppg"]
        assert entry["version"] == 1 and entry["sunset"] > time.time() + 3000
        assert {m["version"] for m in models["models"] if m["modality"] == "ppg"} == {2}
        metrics = c.get("/metrics").text
    assert (
        "pulsefm_retiring_version_calls_total{client=" in metrics
        and 'modality="ppg",version="1"} 1.0' in metrics
    )
    assert not np.allclose(latest.json()["embeddings"], old.json()["embeddings"])  # really another model


def test_past_its_grace_period_a_version_is_gone(repo) -> None:
    config = repo / "ppg_encoder" / "config.pbtxt"
    stamp = config.stat().st_mtime
    os.utime(config, (stamp - 7200, stamp - 7200))  # the policy changed two hours ago
    try:
        with TestClient(create_app(Settings(repo=repo, retire_grace_s=3600))) as c:
            r = c.post("/v1/embed", json=BODY | {"model_version": 1})
            assert r.status_code == 410 and r.json()["error"] == "gone"
            assert "served: [2]" in r.json()["detail"] and "retired on" in r.json()["detail"]
            assert c.post("/v1/embed", json=BODY | {"model_version": 9}).status_code == 404
            assert c.post("/v1/embed", json=BODY).status_code == 200
    finally:
        os.utime(config, (stamp, stamp))
