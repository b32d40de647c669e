"""Structured logs: one JSON line per request from the front door with the request id, route,
status, latency, version and windows; never a body, a query value or a key."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.logs import JsonFormatter
from service.settings import Settings
from tests.gateway_helpers import build_repo, raw_segments

SECRET = "k-secret-123"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("logs"))


def _lines(caplog) -> list[dict]:
    fmt = JsonFormatter()
    return [json.loads(fmt.format(r)) for r in caplog.records if r.name == "pulsefm.access"]


def test_access_log_lines_are_json_with_the_request_facts(repo, caplog) -> None:
    x = raw_segments("ecg", 1, 128.0)
    long = np.concatenate([x[0], x[0]], axis=-1)  # 60 s: two windows
    with TestClient(create_app(Settings(repo=repo, api_keys=SECRET))) as c, caplog.at_level(logging.INFO):
        ok = c.post(
            "/v1/embed",
            json={"modality": "ecg", "fs": 128, "segments": [long.tolist()]},
            headers={"X-API-Key": SECRET, "X-Request-ID": "req-1"},
        )
        bad = c.post(
            "/v1/embed?fs=128&modality=ecg&marker=zzz-query",
            content=b"zzz-body",
            headers={"X-API-Key": SECRET},
        )
        denied = c.get("/v1/models")
    assert ok.status_code == 200 and bad.status_code == 422 and denied.status_code == 401
    lines = _lines(caplog)
    by_id = {ln["request_id"]: ln for ln in lines}
    first = by_id["req-1"]
    assert first["route"] == "/v1/embed" and first["status"] == 200 and first["method"] == "POST"
    assert first["modality"] == "ecg" and first["model_version"] == 1
    assert first["windows"] == 2 and first["windows_used"] == 2 and first["latency_ms"] > 0
    assert {ln["status"] for ln in lines} >= {200, 422, 401}
    server_side = [r for r in caplog.records if not r.name.startswith("httpx")]  # not the test client's
    text = "\n".join(JsonFormatter().format(r) for r in server_side)
    for leaked in (SECRET, "zzz-body", "zzz-query"):
        assert leaked not in text


def test_access_log_can_be_turned_off(repo, caplog) -> None:
    with TestClient(create_app(Settings(repo=repo, access_log=False))) as c, caplog.at_level(logging.INFO):
        assert c.get("/healthz").status_code == 200
    assert not _lines(caplog)


def test_errors_are_json_with_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "pulsefm.gateway", logging.ERROR, __file__, 1, "request %s failed", ("r1",), sys.exc_info()
        )
    doc = json.loads(JsonFormatter().format(record))
    assert (
        doc["message"] == "request r1 failed" and "ValueError: boom" in doc["exc"] and doc["level"] == "ERROR"
    )
