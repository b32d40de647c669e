"""`pulse-fm serve --workers 2` as deployed: connections spread over both processes, one /metrics
for all, a killed worker replaced, a clean stop."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
import torch

from service.triton_local import free_port
from tests.gateway_helpers import build_repo, raw_segments
from tests.test_export import make_artifact, probes_doc
from training.publish import publish


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repo(tmp_path_factory.mktemp("workers"))


def _pids(url: str, n: int) -> set[int]:
    """Worker pids behind `n` fresh connections."""
    return {httpx.get(url + "/healthz", timeout=10).json()["worker"] for _ in range(n)}


def _wait(predicate, seconds: float) -> bool:
    """Until `predicate()` holds. A connection reset meanwhile is "not yet": connections the kernel
    had queued on a killed worker's own SO_REUSEPORT socket are reset when that socket goes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except httpx.TransportError:
            pass
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


def test_an_admin_call_reaches_every_worker(tmp_path) -> None:
    """A rollout change or a reload asked of one worker is followed by all of them (the state is in
    the repository; each worker re-reads it), so a canary stays sticky per client whichever worker
    its connection lands on, and a promote sees the candidate another worker started."""
    repo = build_repo(tmp_path / "root")  # ppg v1
    art = make_artifact("ppg", 1)
    torch.save(art, tmp_path / "v2.pt")
    publish(repo, tmp_path / "v2.pt", probes_doc("ppg", art, tmp_path / "v2.json"), hold=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        PULSEFM_REPO=str(repo),
        PULSEFM_ADMIN_KEYS="adm",
        PULSEFM_WATCH_REPO_S="0",  # no repository polling: only the admin calls move anything
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    cmd = [sys.executable, "-m", "pulsefm.cli", "serve", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    body = {"modality": "ppg", "fs": 64, "segments": raw_segments("ppg", 1, 64.0).tolist()}
    admin = {"X-API-Key": "adm"}

    def versions(n: int = 16, **extra: object) -> set[int | str]:  # over n fresh connections
        got: set[int | str] = set()
        for i in range(n):
            r = httpx.post(url + "/v1/embed", json=body | extra, headers={"X-Client-ID": f"c{i}"}, timeout=30)
            got.add(int(r.headers["X-Model-Version"]) if r.status_code == 200 else r.text)
        return got

    def admin_call(path: str, doc: dict[str, object]) -> dict[str, object]:
        r = httpx.post(url + path, json=doc, headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    try:
        assert _wait(lambda: _ready(url) and len(_pids(url, 10)) == 2, 90), "two workers did not come up"
        assert versions() == {1}  # held
        admin_call(
            "/v1/admin/rollout", {"modality": "ppg", "candidate": 2, "mode": "canary", "fraction": 1.0}
        )
        time.sleep(2.5)  # every worker follows within PULSEFM_WATCH_ADMIN_S (1 s)
        assert versions(24) == {2}, "a worker still answers from before the canary"
        for _ in range(6):  # whichever worker takes it knows the candidate another one started
            promoted = admin_call("/v1/admin/promote", {"modality": "ppg"})
            assert promoted["current"] == 2, promoted
            admin_call("/v1/admin/rollback", {"modality": "ppg"})
            admin_call(
                "/v1/admin/rollout", {"modality": "ppg", "candidate": 2, "mode": "canary", "fraction": 1.0}
            )
        admin_call("/v1/admin/rollback", {"modality": "ppg"})
        time.sleep(2.5)
        assert versions(24) == {1}
        history = json.loads((repo / "rollout.json").read_text())["ppg"]["history"]
        assert [h["action"] for h in history].count("promote") == 6  # no change lost between workers

        torch.save(make_artifact("ppg", 2), tmp_path / "v3.pt")
        publish(repo, tmp_path / "v3.pt", probes_doc("ppg", art, tmp_path / "v3.json"), hold=True)
        admin_call("/v1/admin/reload", {})  # one worker asked; every one loads v3
        # each worker loads v3 within a poll (1 s) plus its load and warm-up
        assert _wait(lambda: versions(24, model_version=3) == {3}, 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_workers_socket_gives_its_connections_tcp_nodelay() -> None:
    """asyncio sets TCP_NODELAY only on accepted sockets whose proto is IPPROTO_TCP: a worker's
    socket bound with proto 0 gave every answer (head and body written apart) a ~40 ms wait for the
    client's delayed ACK (2 workers: unloaded p50 48 ms against 7 ms with one)."""
    import asyncio
    import socket

    from service.workers import bind

    async def accepted_nodelay() -> int:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                got.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        sock = bind("127.0.0.1", 0)
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        value = await asyncio.wait_for(got, 10)
        writer.close()
        server.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0
