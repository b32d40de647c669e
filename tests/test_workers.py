"""`pulse-fm serve --workers 2` as deployed: connections spread over both processes, one /metrics
for all, a killed worker replaced, a clean stop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from service.triton_local import free_port
from tests.gateway_helpers import build_repo, raw_segments


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("workers"))


def _pids(url: str, n: int) -> set[int]:
    """Worker pids behind `n` fresh connections."""
    return {httpx.get(url + "/healthz", timeout=10).json()["worker"] for _ in range(n)}


def _wait(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_two_workers_share_the_port_the_metrics_and_survive_a_kill(repo, tmp_path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PULSEFM_REPO=str(repo), PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    cmd = [sys.executable, "-m", "pulsefm.cli", "serve", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _wait(lambda: _ready(url) and len(_pids(url, 10)) == 2, 90), "two workers did not come up"
        pids = _pids(url, 40)
        assert len(pids) == 2  # SO_REUSEPORT: new connections go to both

        body = {"modality": "ecg", "fs": 128, "segments": raw_segments("ecg", 1, 128.0).tolist()}
        for _ in range(12):  # fresh connections: both workers answer some
            assert httpx.post(url + "/v1/embed", json=body, timeout=30).status_code == 200
        text = httpx.get(url + "/metrics", timeout=10).text
        answered = re.search(r'pulsefm_requests_total\{endpoint="/v1/embed",status="200"\} (\S+)', text)
        assert answered is not None and float(answered.group(1)) == 12.0  # summed over the workers
        assert "pulsefm_model_info" in text

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        assert _wait(lambda: len(_pids(url, 10) - {victim}) == 2, 60), "the killed worker was not replaced"
        assert httpx.post(url + "/v1/embed", json=body, timeout=30).status_code == 200
        text = httpx.get(url + "/metrics", timeout=10).text
        answered = re.search(r'pulsefm_requests_total\{endpoint="/v1/embed",status="200"\} (\S+)', text)
        # the dead worker's counts stay in the sum (counters never go back)
        assert answered is not None and float(answered.group(1)) == 13.0

        workers = pids - {victim} | _pids(url, 10)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        time.sleep(0.5)
        for pid in workers:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
