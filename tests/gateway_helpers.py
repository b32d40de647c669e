"""Shared fixtures' helpers for gateway tests: a published test repository, a uvicorn thread, a
.npy body and one HTTP answer read off a raw socket."""

from __future__ import annotations

import io
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

from service.server import uvicorn_config
from service.settings import Settings
from service.triton_local import free_port
from tests.test_export import make_artifact, probes_doc
from training.publish import publish
from training.synthetic import CohortConfig, simulate_participant

_BUILT: dict[int, Path] = {}  # seed -> a repository built once per test process


def build_repo(root: Path, seed: int = 0) -> Path:
    """ppg + ecg encoders (tiny, BatchNorm calibrated on SYNTHETIC data) with two probe heads each,
    published as version 1: built (export + parity checks, ~10 s) once per process and seed, then
    copied into `root/repo`, so that each test owns its copy."""
    if seed not in _BUILT:
        origin = Path(tempfile.mkdtemp(prefix=f"pulsefm-test-repo-{seed}-"))
        for mod in ("ppg", "ecg"):
            art = make_artifact(mod, seed)
            pt = origin / f"{mod}-{seed}.pt"
            torch.save(art, pt)
            publish(origin / "repo", pt, probes_doc(mod, art, origin / f"{mod}-{seed}-probes.json"))
        _BUILT[seed] = origin / "repo"
    repo = root / "repo"
    shutil.copytree(_BUILT[seed], repo)
    return repo


def raw_segments(modality: str, n: int, fs: float, seed: int = 0) -> np.ndarray:
    """n raw SYNTHETIC segments (C, duration x fs) at `fs`, as a device would send them."""
    from pulsefm.preprocess import resample, spec_for

    spec = spec_for(modality)
    cfg = CohortConfig(
        recordings=1, modalities=(modality,), ppg_duration_s=200, ecg_duration_s=100, seed=seed
    )
    _, recs = simulate_participant(cfg, 0)
    sig = resample(recs[0].signal, recs[0].fs, fs)
    length = round(spec.duration_s * fs)
    hop = max(1, (sig.shape[-1] - length) // max(1, n))
    out = np.stack([sig[:, i * hop : i * hop + length] for i in range(n)])
    return np.ascontiguousarray(out, dtype=np.float32)


class ServerThread:
    """A real uvicorn server on loopback running `app` (lifespan included), with the gateway's
    connection guards (service/server.py) configured from `settings`."""

    def __init__(self, app: object, settings: Settings | None = None) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn_config(
            app, settings or Settings(), "127.0.0.1", self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def npy(x: np.ndarray) -> bytes:
    """`x` as a .npy body."""
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def npy_header(shape: tuple[int, ...], descr: str, body: bytes = b"") -> bytes:
    """A .npy version 1.0 head claiming `shape` and `descr`, then `body` (which need not fit it)."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + body


def read_answer(sock: socket.socket, timeout_s: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One whole HTTP/1.1 answer from a blocking socket: status, headers (lower-case names), body."""
    sock.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    while len(rest) < int(headers.get("content-length", 0)):
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), headers, rest


def metric_value(url: str, name: str, **labels: str) -> float:
    """The sum of the gateway's samples `name` whose labels include `labels` (0 when none)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )
