"""Answers the gateway gives at the HTTP level, over a real socket to a real uvicorn server with
the connection guards of service/server.py: every answer, including those given before a route
exists (bytes that are not HTTP, a request target too long, no such route, a method the route
does not take), has the error table's JSON body with the request id and is counted; a request that
asks to upgrade the protocol (h2c, websocket) is served as the HTTP/1.1 request it also is."""

from __future__ import annotations

import json
import socket

import httpx
import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from service.app import create_app
from service.settings import Settings
from tests.gateway_helpers import ServerThread, build_repo, npy, raw_segments

ECG = raw_segments("ecg", 1, 128.0)
EMBED_ECG = b"/v1/embed?modality=ecg&fs=128"
Answer = tuple[int, dict[str, str], bytes]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = Settings(repo=build_repo(tmp_path_factory.mktemp("proto")), header_timeout_s=2.0)
    with ServerThread(create_app(settings), settings) as s:
        yield s


def exchange(port: int, request: bytes, count: int = 1, bodiless: bool = False) -> list[Answer]:
    """Send `request` on a new connection; read up to `count` answers (status, headers, body),
    fewer when the server closes after one. A close inside an answer, or silence for 10 s, fails.
    `bodiless`: the first answer is to a HEAD, its Content-Length describes a body not sent."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(10.0)
    sock.sendall(request)
    buf, got = b"", list[Answer]()
    try:
        while len(got) < count:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                lines = buf[:end].decode("latin-1").split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                size = end + 4 + (0 if bodiless and not got else int(headers.get("content-length", 0)))
                if len(buf) >= size:
                    status, body, buf = int(lines[0].split()[1]), buf[end + 4 : size], buf[size:]
                    if status != 100:
                        got.append((status, headers, body))
                    continue
            chunk = sock.recv(65536)
            if not chunk:
                assert not buf, f"the connection closed inside an answer: {buf[:200]!r}"
                break
            buf += chunk
    finally:
        sock.close()
    return got


def post(target: bytes, body: bytes, *headers: bytes) -> bytes:
    head = [b"POST " + target + b" HTTP/1.1", b"Host: x", b"Content-Type: application/x-npy"]
    head += [*headers, b"Content-Length: " + str(len(body)).encode()]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def assert_table_answer(answer: Answer) -> dict:
    """An error answer as the front door writes it: JSON {error, detail, request_id}, the id in
    X-Request-ID too."""
    _, headers, body = answer
    doc = json.loads(body)
    assert headers["content-type"] == "application/json", headers
    assert doc["error"] and doc["detail"] and doc["request_id"] == headers["x-request-id"], doc
    return doc


@pytest.mark.parametrize(
    "upgrade",
    [
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        b"Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        b"Connection: keep-alive, Upgrade\r\nUpgrade: foo/1",
    ],
    ids=["h2c", "websocket", "other"],
)
def test_a_request_asking_to_upgrade_is_served_as_http_1_1(server, upgrade: bytes) -> None:
    """httptools takes what follows such a head for the other protocol: the body was lost (422 "not
    a .npy array") and the next request on the connection went unanswered."""
    body = npy(ECG)
    plain = exchange(server.port, post(EMBED_ECG, body))[0]
    chunked = (
        b"POST "
        + EMBED_ECG
        + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        + upgrade
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    then_healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for request in (post(EMBED_ECG, body, *upgrade.split(b"\r\n")), chunked):
        got = exchange(server.port, request + then_healthz, count=2)
        assert [a[0] for a in got] == [200, 200], [(a[0], a[2][:200]) for a in got]
        assert json.loads(got[0][2])["embeddings"] == json.loads(plain[2])["embeddings"]
    healthz = exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + upgrade + b"\r\n\r\n")
    assert healthz[0][0] == 200


def test_connect_and_bytes_that_are_not_http_get_a_400_that_says_why(server) -> None:
    cases = {
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n": "CONNECT",
        b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n": "Length",
        b"POST /v1/embed HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde": "Content-Length",
        b"GET /healthz HTTP/9.9\r\n\r\n": "version",
        b"G\x00T / HTTP/1.1\r\n\r\n": "method",
        b"GET /\x01 HTTP/1.1\r\n\r\n": "url",
        b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n": "request target",
    }
    for request, named in cases.items():
        (answer,) = exchange(server.port, request, count=2)  # and then the connection is closed
        doc = assert_table_answer(answer)
        assert answer[0] == 400 and doc["error"] == "bad_http" and answer[1]["connection"] == "close"
        assert named.lower() in doc["detail"].lower(), (request, doc)


def test_garbage_after_a_request_is_answered_after_it(server) -> None:
    """The 400 for bytes that follow a request on its connection comes after that request's answer
    (it was written at once, ahead of an answer still being computed, which was then lost)."""
    for first in (post(EMBED_ECG, npy(ECG)), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"):
        got = exchange(server.port, first + b"\x00garbage\r\n\r\n", count=3)
        assert [a[0] for a in got] == [200, 400], [(a[0], a[2][:120]) for a in got]
        assert assert_table_answer(got[1])["error"] == "bad_http" and got[1][1]["connection"] == "close"


def test_garbage_after_pipelined_requests_is_answered_after_all_of_them(server) -> None:
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    got = exchange(server.port, post(EMBED_ECG, npy(ECG)) + healthz + healthz + b"\x00junk\r\n\r\n", count=5)
    assert [a[0] for a in got] == [200, 200, 200, 400], [(a[0], a[2][:80]) for a in got]


def test_many_upgrade_requests_in_one_read_are_all_served(server) -> None:
    """Each is parsed again without its Upgrade header, in a loop (a recursion per request reached
    Python's recursion limit within one read, and the connection was dropped)."""
    one = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    got = exchange(server.port, one * 1500, count=1500)
    assert len(got) == 1500 and {a[0] for a in got} == {200}


def test_a_query_parameter_given_twice_is_refused(server) -> None:
    """Starlette keeps the last of repeated query parameters: `fs=128&fs=64` was read as 64."""
    (answer,) = exchange(server.port, post(b"/v1/embed?modality=ecg&fs=128&fs=64", npy(ECG)))
    doc = assert_table_answer(answer)
    assert (
        answer[0] == 422
        and doc["problems"][0]["reason"] == "parameter"
        and "'fs' is given 2 times" in doc["detail"]
    )


def test_a_request_target_over_the_parsers_cap_is_414(server) -> None:
    (answer,) = exchange(server.port, b"GET /healthz?x=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer[0] == 414 and assert_table_answer(answer)["error"] == "uri_too_long"


def test_no_route_and_a_wrong_method_come_from_the_error_table(server) -> None:
    with httpx.Client(base_url=server.url) as c:
        missing = c.get("/v1/nothing-here", headers={"X-Request-ID": "r-1"})
        wrong = c.request("PUT", "/v1/embed")
        head = c.head("/v1/predict")
        metrics = c.get("/metrics").text
    assert missing.status_code == 404 and missing.json() == {
        "error": "not_found",
        "detail": "nothing at GET /v1/nothing-here: the routes are listed at /docs",
        "request_id": "r-1",
    }
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"] == "method_not_allowed" and "PUT" in wrong.json()["detail"]
    assert head.status_code == 405 and head.content == b""  # an answer to HEAD has no body
    assert 'pulsefm_request_failures_total{reason="not_found"}' in metrics
    assert 'pulsefm_requests_total{endpoint="/v1/embed",status="405"}' in metrics


def _mostly(valid: st.SearchStrategy[str], odd: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Three draws in four from `valid`, so that the fuzz reaches the routes as well as the parser."""
    return st.integers(0, 3).flatmap(lambda i: odd if i == 0 else valid)


_any_text = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=30)
_token = st.text(st.characters(whitelist_categories=["Lu", "Ll", "Nd"], max_codepoint=127), max_size=10)
_method = _mostly(st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS", "DELETE"]), _any_text)
_target = _mostly(
    st.sampled_from(
        ["/v1/embed", "/v1/predict", "/healthz", "/readyz", "/metrics", "/v1/models", "/v1/admin/reload"]
    ).flatmap(lambda p: st.sampled_from([p, p + "?modality=ecg&fs=128", p + "/", p + "?x=%ff"])),
    st.one_of(
        _any_text.map(lambda t: "/" + t),
        st.sampled_from(["*", "http://h/v1/embed", "h:443", "", "//v1/embed", "/v1/%2e%2e/healthz"]),
    ),
)
_header_line = _mostly(
    st.sampled_from(
        [
            "Connection: Upgrade",
            "Upgrade: h2c",
            "Upgrade: websocket",
            "Connection: close",
            "Connection: keep-alive, Upgrade",
            "Transfer-Encoding: chunked",
            "Transfer-Encoding: gzip",
            "Content-Length: 3",
            "Content-Length: -1",
            "Expect: 100-continue",
            "Content-Type: application/json",
            "Content-Type: application/x-npy",
            "Content-Encoding: br",
            "X-API-Key: nope",
            "X-Request-ID: fuzz-1",
        ]
    ),
    st.one_of(
        st.tuples(_token, _any_text).map(lambda kv: f"{kv[0]}: {kv[1]}"),
        st.sampled_from([" folded", "NoColon", ": empty-name", "X-A:\tb", "X-A: b\x7f"]),
    ),
)


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def _framed(header_lines: list[str], body: bytes) -> tuple[list[str], bytes]:
    """The headers and the body bytes to send so that the request is whole (nothing waits for bytes
    never sent; that is the body deadline's case, tested elsewhere): a chunked body in chunks, a
    Content-Length body of that length, no body when the framing is invalid (the parser refuses
    the head)."""
    if any("chunked" in line.lower() for line in header_lines):
        chunk = f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b""  # a 0-size chunk ends it
        return header_lines, chunk + b"0\r\n\r\n"
    declared = {
        ln.split(":", 1)[1].strip() for ln in header_lines if ln.lower().startswith("content-length:")
    }
    if not declared:
        return [*header_lines, f"Content-Length: {len(body)}"], body
    n = declared.pop()
    if declared or not n.isdigit():
        return header_lines, b""  # -1, or two different lengths: a 400 from the head alone
    fill = body or b"x"
    return header_lines, (fill * (int(n) // len(fill) + 1))[: int(n)]


def test_any_request_head_gets_a_table_answer_or_a_success_never_a_5xx(server) -> None:
    """Any request line, any headers (upgrades, framing, folding, control bytes), a whole body, then
    perhaps another request or junk on the same connection: the answers come at once and in order,
    none is a 5xx, and every error answer has the table's shape."""
    seen: list[int] = []

    @hypothesis.settings(
        max_examples=400, deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck)
    )
    @hypothesis.given(
        method=_method,
        target=_target,
        version=_mostly(
            st.sampled_from(["HTTP/1.1", "HTTP/1.0"]), st.sampled_from(["HTTP/2.0", "HTTP/1.1 x", ""])
        ),
        header_lines=st.lists(_header_line, max_size=5),
        body=st.binary(max_size=64),
        then=st.sampled_from([b"", HEALTHZ, b"\r\n0\r\n\r\nxxxxxxxx"]),
    )
    def one(
        method: str, target: str, version: str, header_lines: list[str], body: bytes, then: bytes
    ) -> None:
        lines, payload = _framed(header_lines, body)
        head = (
            f"{method} {target} {version}".rstrip() + "\r\nHost: x\r\n" + "".join(ln + "\r\n" for ln in lines)
        )
        request = (head + "\r\n").encode("latin-1") + payload
        hypothesis.note(repr(request + then))
        got = exchange(
            server.port, request + then, count=2 if then == HEALTHZ else 1, bodiless=method == "HEAD"
        )
        hypothesis.assume(got)  # a server may close without an answer only before any request exists
        seen.append(got[0][0])
        for status, headers, answer in got:
            assert status < 500, (request[:300], status, answer[:300])
            assert headers.get("x-request-id"), headers
            if status >= 400 and answer:
                assert_table_answer((status, headers, answer))
        if len(got) == 2:  # the request after it on the connection: answered, in order
            assert got[1][0] == 200 and json.loads(got[1][2])["status"] == "alive", got[1]

    one()
    assert {200, 400, 404, 405, 422} <= set(seen), sorted(set(seen))  # the parser, the routes, the app


def test_the_fuzzed_heads_leave_the_gateway_serving(server) -> None:
    got = exchange(server.port, post(EMBED_ECG, npy(ECG)))
    assert got[0][0] == 200 and np.isfinite(json.loads(got[0][2])["embeddings"]).all()


@hypothesis.settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=list(hypothesis.HealthCheck)
)
@hypothesis.given(
    encoding=st.one_of(
        st.sampled_from(
            ["identity", "IDENTITY", " identity ", "", "gzip", "br", "deflate", "zstd", "x-gzip"]
        ),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12),
    )
)
def test_a_body_is_refused_as_415_exactly_when_it_is_encoded(server, encoding: str) -> None:
    """Any Content-Encoding but identity (or none) is a 415 naming it; the plain body is served."""
    (answer,) = exchange(server.port, post(EMBED_ECG, npy(ECG), b"Content-Encoding: " + encoding.encode()))
    encoded = encoding.strip().lower() not in ("", "identity")
    assert answer[0] == (415 if encoded else 200), (encoding, answer[0], answer[2][:200])
    if encoded:
        assert assert_table_answer(answer)["error"] == "unsupported_encoding"
