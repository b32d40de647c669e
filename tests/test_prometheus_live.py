"""The dashboard and the alerts against a real Prometheus (Debian's `prometheus`, installed by
.ci/run): it scrapes a real gateway under a short load (bounded: ~100 requests on loopback), then
every Grafana panel query and every alert and recording rule expression is evaluated through
Prometheus's HTTP API and must return data of the expected shape."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from service.app import create_app
from service.settings import Settings
from service.triton_local import free_port
from tests.gateway_helpers import ServerThread, npy, raw_segments

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "pulse-fm.json"
# panels allowed to be empty after a healthy load: nothing failed in the cache
MAY_BE_EMPTY = {
    "Cache errors / s",
    "Retiring versions: answers / s by caller",
    "Shadow: requests not shadowed (budget spent)",
}
LABELS = {"__name__", "endpoint", "status", "stage", "modality", "version", "flag", "target", "reason"}
LABELS |= {"cache", "op", "le", "instance", "job", "route", "current", "candidate", "client"}
ROUNDS = 3  # load in rounds a few scrapes apart, so that every rate() sees an increase


def _load(url: str) -> None:
    """Good and bad requests of every kind the panels count, in ROUNDS a few scrapes apart
    (bounded: ~50 requests, loopback only)."""
    ecg = raw_segments("ecg", 1, 128.0)[0]
    long = np.tile(ecg, (1, 100))  # 50 min: 100 windows a round, enough for the effective-rank gauge
    bad = np.tile(ecg, (1, 2)).astype(np.float64)
    bad[0, 4000] = np.nan  # one of two windows unusable
    wrist = ROOT / "pulsefm" / "examples" / "ppg" / "wrist_130s.csv"  # real: flagged out of distribution
    params = {"modality": "ecg", "fs": "128"}
    headers = {"Content-Type": "application/x-npy"}
    upload = {"file": (wrist.name, wrist.read_bytes())}
    with httpx.Client(base_url=url, timeout=60) as c:
        for k in range(ROUNDS):  # new samples each round (cache misses), repeated within it (hits)
            shift = np.float32(0.001 * (k + 1))
            one_window = {"modality": "ecg", "fs": 128, "segments": [(ecg + shift).tolist()]}
            statuses = [
                c.post(
                    "/v1/embed", content=npy(long[None] + shift), params=params, headers=headers
                ).status_code,
                c.post(
                    "/v1/embed", content=npy(bad[None] + shift), params=params, headers=headers
                ).status_code,
            ]
            statuses += [c.post("/v1/predict", json=one_window).status_code for _ in range(7)]
            statuses += [
                c.post("/v1/predict", files=upload, data={"modality": "ppg", "fs": "19.5814"}).status_code
                for _ in range(3)
            ]
            assert set(statuses) == {200}, statuses
            short = {"modality": "ecg", "fs": 128, "segments": [[[1.0]]]}
            assert {c.post("/v1/embed", json=short).status_code for _ in range(3)} == {422}
            assert c.get("/v1/models").status_code == 200
            time.sleep(2.5)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (.ci/run installs Debian's prometheus)")
    tmp = tmp_path_factory.mktemp("prom")
    repo = tmp / "repo"
    shutil.copytree(ROOT / "model_repository", repo)  # the shipped model; the shadow writes rollout.json
    with ServerThread(create_app(Settings(repo=repo, admin_keys="adm"))) as gateway:
        shadow = {"modality": "ppg", "candidate": 1, "mode": "shadow"}  # v2 answers, v1 in shadow
        r = httpx.post(f"{gateway.url}/v1/admin/rollout", json=shadow, headers={"X-API-Key": "adm"})
        assert r.status_code == 200, r.text
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "pulse-fm-gateway",
                    "static_configs": [{"targets": [gateway.url.removeprefix("http://")]}],
                }
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        api = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    if httpx.get(f"{api}/-/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            _load(gateway.url)
            time.sleep(3)  # scrapes and rule evaluations after the load
            yield api
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def query(api: str, expr: str) -> dict:
    r = httpx.get(f"{api}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]


def test_prometheus_scrapes_the_gateway(prometheus) -> None:
    up = query(prometheus, 'up{job="pulse-fm-gateway"}')["result"]
    assert up and up[0]["value"][1] == "1"


def test_every_dashboard_panel_returns_data(prometheus) -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    empty = []
    for panel in panels:
        for target in panel["targets"]:
            data = query(prometheus, target["expr"])
            assert data["resultType"] == "vector", (panel["title"], data["resultType"])
            values = [float(s["value"][1]) for s in data["result"]]
            if not np.isfinite(values).any() and panel["title"] not in MAY_BE_EMPTY:
                empty.append(panel["title"])
            for s in data["result"]:
                assert set(s["metric"]) <= LABELS, s["metric"]
    assert not empty, f"panels without data after the load: {empty}"


def test_every_rule_expression_evaluates(prometheus) -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = [r for g in groups for r in g["rules"]]
    for rule in rules:
        data = query(prometheus, rule["expr"])
        assert data["resultType"] == "vector", rule
    recorded = {r["record"] for r in rules if "record" in r}
    for name in (
        "pulsefm:error_ratio:rate5m",
        "pulsefm:overload_ratio:rate5m",
        "pulsefm:slow_ratio:rate5m",
        "pulsefm:ood_share:rate30m",
    ):
        assert name in recorded
        result = query(prometheus, name)["result"]
        assert result, f"{name}: Prometheus evaluated no value"
    ood = {
        s["metric"]["modality"]: float(s["value"][1])
        for s in query(prometheus, "pulsefm:ood_share:rate30m")["result"]
    }
    assert ood.get("ppg", 0) > 0.5  # the real wrist PPG is flagged out of distribution
    alerts = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {r["name"] for g in alerts for r in g["rules"]} >= {r.get("alert") for r in rules if "alert" in r}
    assert all(r["health"] == "ok" for g in alerts for r in g["rules"]), [
        (r["name"], r.get("lastError")) for g in alerts for r in g["rules"] if r["health"] != "ok"
    ]


def test_rule_names_match_the_file(prometheus) -> None:
    text = ALERTS.read_text()
    assert re.findall(r"- alert: (\w+)", text)
