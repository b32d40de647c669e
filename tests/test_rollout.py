"""A retraining job's rollout against the real gateway (uvicorn on loopback): publish a candidate
held back, canary it to a sticky share of clients, shadow it (cosine and prediction deltas in
metrics, the answers unchanged), promote it, roll it back; every step one admin call, persisted
in rollout.json (a restarted gateway keeps it) and logged."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.rollout import ROLLOUT_FILE
from service.settings import Settings
from tests.gateway_helpers import ServerThread, build_repo, raw_segments
from tests.test_export import make_artifact, probes_doc
from training.publish import publish

ADMIN, APP = {"X-API-Key": "adm-key"}, {"X-API-Key": "app-key"}
BODY = {"modality": "ppg", "fs": 64, "segments": raw_segments("ppg", 1, 64.0).tolist()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout")
    repo = build_repo(root)  # ppg v1
    art = make_artifact("ppg", 1)
    torch.save(art, root / "v2.pt")
    publish(repo, root / "v2.pt", probes_doc("ppg", art, root / "v2.json"), hold=True)
    return repo


def settings(repo) -> Settings:
    return Settings(repo=repo, api_keys="app-key", admin_keys="adm-key", watch_repo_s=0)


def version_of(c: httpx.Client, client_id: str | None = None) -> int:
    headers = APP | ({"X-Client-ID": client_id} if client_id else {})
    r = c.post("/v1/embed", json=BODY, headers=headers)
    assert r.status_code == 200, r.text
    return int(r.headers["X-Model-Version"])


def samples(c: httpx.Client, name: str) -> list[tuple[dict[str, str], float]]:
    text = c.get("/metrics").text
    return [
        (s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
    ]


def test_publish_hold_canary_shadow_promote_rollback(repo) -> None:
    assert json.loads((repo / ROLLOUT_FILE).read_text())["ppg"]["current"] == 1  # held by publish --hold
    with (
        ServerThread(create_app(settings(repo))) as server,
        httpx.Client(base_url=server.url, timeout=30) as c,
    ):
        assert version_of(c) == 1  # v2 is served (pinnable) but unpinned traffic stays on v1
        assert (
            c.post("/v1/embed", json=BODY | {"model_version": 2}, headers=APP).headers["X-Model-Version"]
            == "2"
        )
        denied = c.post(
            "/v1/admin/rollout",
            json={"modality": "ppg", "candidate": 2, "mode": "canary", "fraction": 0.5},
            headers=APP,
        )
        assert denied.status_code == 403

        # canary: half the clients, each always on the same version
        r = c.post(
            "/v1/admin/rollout",
            json={"modality": "ppg", "candidate": 2, "mode": "canary", "fraction": 0.5},
            headers=ADMIN,
        )
        assert r.status_code == 200 and r.json()["mode"] == "canary"
        seen = {f"client-{i}": version_of(c, f"client-{i}") for i in range(24)}
        assert {version_of(c, k) for k in list(seen)[:8]} <= {1, 2}
        assert all(version_of(c, k) == v for k, v in list(seen.items())[:8])  # sticky
        share = sum(v == 2 for v in seen.values()) / len(seen)
        assert 0.15 < share < 0.85, share
        routes = {(lab["version"], lab["route"]) for lab, v in samples(c, "pulsefm_routed_total") if v > 0}
        assert ("2", "canary") in routes and ("1", "current") in routes and ("2", "pinned") in routes

        # shadow: every answer from v1, v2 run beside it, their agreement in metrics
        r = c.post(
            "/v1/admin/rollout", json={"modality": "ppg", "candidate": 2, "mode": "shadow"}, headers=ADMIN
        )
        assert r.status_code == 200
        assert {version_of(c, f"client-{i}") for i in range(6)} == {1}
        for _ in range(50):
            cos = [v for lab, v in samples(c, "pulsefm_shadow_cosine_count") if lab["candidate"] == "2"]
            if cos and cos[0] >= 6:
                break
            time.sleep(0.1)
        assert cos and cos[0] >= 6
        deltas = {lab["target"] for lab, v in samples(c, "pulsefm_shadow_prediction_delta_count") if v > 0}
        assert {"age", "sex"} <= deltas  # the test heads' targets (other tests' models share the registry)

        # promote (the candidate), then roll back (to v1)
        r = c.post("/v1/admin/promote", json={"modality": "ppg"}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["current"] == 2 and r.json()["mode"] is None
        assert version_of(c) == 2
        r = c.post("/v1/admin/rollback", json={"modality": "ppg"}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["current"] == 1
        assert version_of(c) == 1
        state = c.get("/v1/models", headers=APP).json()["rollouts"]["ppg"]
        assert [h["action"] for h in state["history"]] == ["hold", "canary", "shadow", "promote", "rollback"]
        assert all(h["by"] != "adm-key" for h in state["history"])  # a key digest, not the key
        bad = c.post("/v1/admin/promote", json={"modality": "ppg", "version": 7}, headers=ADMIN)
        assert bad.status_code == 404
        assert c.post("/v1/admin/rollout", json={"modality": "ppg"}, headers=ADMIN).status_code == 422

    # a restarted gateway keeps the rollout state
    with (
        ServerThread(create_app(settings(repo))) as server,
        httpx.Client(base_url=server.url, timeout=30) as c,
    ):
        assert version_of(c) == 1


def test_a_damaged_rollout_file_does_not_stop_serving(tmp_path) -> None:
    repo = build_repo(tmp_path)
    (repo / ROLLOUT_FILE).write_text("{not json")
    app = create_app(settings(repo))
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/readyz").status_code == 200
        assert version_of(c) == 1
