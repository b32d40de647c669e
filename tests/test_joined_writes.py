"""An answer leaves the gateway in one write (service/server.py, `_JoinedWrites`): each `send()` lets
go of the GIL and the event loop then waits to get it back behind the CPU threads. Unit tests of
the holder on a recording transport; end to end, the real app over a real socket, counting the
writes that reach asyncio's socket transport per answer, whatever the answer is."""

from __future__ import annotations

import json
import socket
from asyncio import selector_events
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.app import create_app
from service.routes.docs import assets_dir
from service.server import _JoinedWrites
from service.settings import Settings
from tests.gateway_helpers import ServerThread, build_repo, npy, raw_segments, read_answer


class _Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def _joined() -> tuple[_JoinedWrites, _Recording]:
    t = _Recording()
    return _JoinedWrites(t), t  # type: ignore[arg-type]


def test_held_writes_go_out_as_one_in_order() -> None:
    w, t = _joined()
    w.write(b"direct")
    w.hold()
    w.write(b"HTTP/1.1 200 OK\r\n\r\n")
    w.write(bytearray(b"body"))
    w.write(b"")
    assert t.writes == [b"direct"]
    w.release()
    assert t.writes == [b"direct", b"HTTP/1.1 200 OK\r\n\r\nbody"]
    w.release()  # nothing held: nothing written
    w.write(b"after")
    assert t.writes[-1] == b"after" and len(t.writes) == 3


def test_close_writes_what_is_held_first_and_abort_drops_it() -> None:
    w, t = _joined()
    w.hold()
    w.write(b"head")
    w.close()
    assert t.writes == [b"head"] and t.closed
    w2, t2 = _joined()
    w2.hold()
    w2.write(b"head")
    w2.abort()
    w2.release()
    assert t2.writes == [] and t2.aborted


def test_everything_else_is_the_transports() -> None:
    w, _ = _joined()
    assert w.get_extra_info("peername") == "info:peername"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(tmp_path_factory.mktemp("joined"))


def test_every_kind_of_answer_is_one_write_on_a_live_connection(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 (JSON and .npy), a 4xx from validation, a 404, /healthz and /metrics: one write each, and
    the keep-alive connection answers them all in turn with complete bodies."""
    writes: list[int] = []
    transport = selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    real = transport.write

    def counted(self: Any, data: Any) -> None:
        writes.append(len(data))
        real(self, data)

    monkeypatch.setattr(transport, "write", counted)
    ecg = npy(raw_segments("ecg", 1, 128.0).astype(np.float32))
    post = "POST /v1/embed?modality=ecg&fs=128 HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-npy\r\n"
    requests = [
        (post + f"Content-Length: {len(ecg)}\r\n\r\n").encode() + ecg,
        (post + f"Accept: application/x-npy\r\nContent-Length: {len(ecg)}\r\n\r\n").encode() + ecg,
        (post + "Content-Length: 3\r\n\r\n").encode() + b"abc",
        b"GET /v1/nowhere HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n",
    ]
    settings = Settings(repo=repo, access_log=False)
    with (
        ServerThread(create_app(settings), settings) as s,
        socket.create_connection(("127.0.0.1", s.port)) as c,
    ):
        statuses = []
        for raw in requests:
            writes.clear()
            c.sendall(raw)
            status, _, body = read_answer(c, timeout_s=10)
            statuses.append(status)
            assert len(writes) == 1, (raw[:40], writes)
            if status == 200 and raw.startswith(b"POST") and b"Accept" not in raw:
                assert len(json.loads(body)["embeddings"][0]) == 256
    assert statuses[:2] == [200, 200] and 400 <= statuses[2] < 500 and statuses[3] == 404
    assert statuses[4:] == [200, 200]


def test_a_streamed_answer_still_arrives_whole(repo: Path) -> None:
    """A file answer comes in several body messages (more_body): the head goes with the first and
    the rest follow as they come."""
    settings = Settings(repo=repo)
    with (
        ServerThread(create_app(settings), settings) as s,
        socket.create_connection(("127.0.0.1", s.port)) as c,
    ):
        c.sendall(b"GET /docs-assets/swagger-ui-bundle.js HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = read_answer(c, timeout_s=10)
    expected = (assets_dir() / "swagger-ui-bundle.js").read_bytes()
    assert status == 200 and len(expected) > 4 * 65536 and body == expected
