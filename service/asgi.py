"""The gateway's front door, as one pure ASGI middleware (no BaseHTTPMiddleware on the hot path).

For every HTTP request, in order:
1. a request id: the client's `X-Request-ID` (if short and printable) or a new one; echoed on
   every answer;
2. admission, before a byte of the body is read: inference routes take a slot (at most
   `max_inflight_requests`) and reserve their Content-Length (or the body limit, when the body
   is chunked) from a budget shared by all connections (`max_body_bytes_in_flight`); refused
   requests get 429 + Retry-After (413 when one body alone is over the limit) at once; a chunked
   body (no Content-Length) reserves `CHUNKED_RESERVE` and extends its reservation as it arrives;
3. the body read is bounded in time (`body_timeout_s`, 408) and in bytes, and so is the answer's
   write (`send_timeout_s`): a client that does not read its answer cannot hold a slot;
4. any exception nobody mapped becomes a generic 500 JSON answer carrying the request id (the
   traceback is logged under it), and the connection stays usable;
5. every answer, whatever its status, is counted and timed under its route template (unmatched
   paths share the label "unmatched"), so clients cannot create label values.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import logs
from service.errors import (
    INTERNAL,
    BodyTimeout,
    ClientGone,
    MethodNotAllowed,
    Overloaded,
    PayloadTooLarge,
    classify,
    error_body,
)
from service.metrics import ADMISSION, BODY_BYTES_IN_FLIGHT, FAILURES, REQUESTS, STAGE_SECONDS

log = logging.getLogger("pulsefm.gateway")

_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# request ids from an in-process generator, reseeded in each forked worker: uuid4 reads
# os.urandom, a system call that lets go of the GIL, and the event loop then waits for a CPU thread
# to hand it back (0.15 ms vs 0.001 ms per id beside two busy threads); ids are labels, not secrets
_IDS = random.Random()
os.register_at_fork(after_in_child=_IDS.seed)
ADMITTED_PATHS = frozenset({"/v1/embed", "/v1/predict"})
CLOSE_AFTER = frozenset({408, 413})  # the rest of the body is unread: the connection cannot be reused
CHUNKED_RESERVE = 1 << 20


class BodyBudgetExceeded(Overloaded):
    """A chunked body outgrew what the shared body budget could still reserve (429, then close)."""


@dataclass
class Admission:
    """Slots and body bytes in flight across all connections; taken before the body is read."""

    max_requests: int
    max_bytes: int
    requests: int = 0
    bytes: int = 0

    def try_take(self, reserve: int) -> str | None:
        """None when admitted (the caller must `give` back), else why not."""
        if self.requests >= self.max_requests:
            return f"{self.requests} requests in flight (limit {self.max_requests}); retry later"
        if self.bytes + reserve > self.max_bytes:
            return f"{self.bytes} body bytes in flight (limit {self.max_bytes}); retry later"
        self.requests += 1
        self.bytes += reserve
        BODY_BYTES_IN_FLIGHT.set(self.bytes)
        return None

    def full(self) -> bool:
        return self.requests >= self.max_requests

    def extend(self, extra: int) -> bool:
        """Reserve `extra` more body bytes for an admitted request, if the budget allows."""
        if self.bytes + extra > self.max_bytes:
            return False
        self.bytes += extra
        BODY_BYTES_IN_FLIGHT.set(self.bytes)
        return True

    def give(self, reserve: int) -> None:
        self.requests -= 1
        self.bytes -= reserve
        BODY_BYTES_IN_FLIGHT.set(self.bytes)


def request_id(client_value: str | None) -> str:
    """The client's X-Request-ID when it is short and printable, else a new one."""
    if client_value and _CLIENT_ID.fullmatch(client_value):
        return client_value
    return f"{_IDS.getrandbits(128):032x}"


def answer_bytes(exc: BaseException, rid: str, headers: dict[str, str], head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 answer for `exc` (the same body as the front door's), for the connection
    level of service/server.py, which answers before any ASGI task exists: early 429s, bytes that
    are not HTTP, oversized heads. `head_only`: the answer to a HEAD (its Content-Length, no body)."""
    status, _, body = error_body(exc, rid)
    payload = orjson.dumps(body)
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n{extra}x-request-id: {rid}\r\n\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else payload)


def refusal_bytes(rid: str, detail: str, retry_after_s: int) -> bytes:
    return answer_bytes(Overloaded(detail), rid, {"retry-after": str(retry_after_s)})


def count_refusal(path: str, seconds: float) -> None:
    """Count an early 429 (`path` is one of ADMITTED_PATHS) with the metric children looked up
    once: `labels()` takes a lock and builds a key each time (a fifth of an early refusal's time
    went to the four lookups)."""
    counters = _REFUSAL_COUNTERS.get(path)
    if counters is None:
        counters = _REFUSAL_COUNTERS[path] = (
            ADMISSION.labels("refused"),
            FAILURES.labels("overloaded"),
            REQUESTS.labels(path, "429"),
        )
        _REFUSAL_SECONDS[path] = STAGE_SECONDS.labels("total", path)
    for counter in counters:
        counter.inc()
    _REFUSAL_SECONDS[path].observe(seconds)


_REFUSAL_COUNTERS: dict[str, tuple[Any, ...]] = {}
_REFUSAL_SECONDS: dict[str, Any] = {}


def count_connection_answer(exc: BaseException) -> str:
    """Count an answer the connection gave before there was a request to route (400, 414, 431, or
    a 500 for a bug in a parser callback); its reason."""
    status, reason = classify(exc)
    FAILURES.labels(reason).inc()
    REQUESTS.labels("unmatched", str(status)).inc()
    return reason


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return str(v.decode("latin-1"))
    return None


def json_answer(status: int, body: dict[str, Any], headers: dict[str, str]) -> tuple[Message, Message]:
    payload = orjson.dumps(body)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return (
        {"type": "http.response.start", "status": status, "headers": raw},
        {"type": "http.response.body", "body": payload},
    )


def error_headers(status: int, retry_after_s: int, close: bool = False) -> dict[str, str]:
    headers = {"retry-after": str(retry_after_s)} if status in (429, 503) else {}
    if close or status in CLOSE_AFTER:
        headers["connection"] = "close"
    return headers


class Frontdoor:
    def __init__(
        self,
        app: ASGIApp,
        admission: Admission,
        max_body_bytes: int,
        body_timeout_s: float,
        retry_after_s: int,
        send_timeout_s: float = 30.0,
        access_log: bool = True,
    ) -> None:
        self.app, self.admission, self.send_timeout_s = app, admission, send_timeout_s
        self.access_log = access_log
        self.max_body_bytes, self.body_timeout_s, self.retry_after_s = (
            max_body_bytes,
            body_timeout_s,
            retry_after_s,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = request_id(_header(scope, b"x-request-id"))
        state: dict[str, Any] = {"status": 0, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                message = dict(message)
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    await send(message)
            except TimeoutError:
                state["status"] = 499  # service/server.py aborts the connection of an unfinished answer
                raise ClientGone(
                    f"the client did not read its answer within {self.send_timeout_s:g} s"
                ) from None

        try:
            if scope["method"] == "POST" and scope["path"] in ADMITTED_PATHS:
                await self._admitted(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if classify(exc) == INTERNAL:
                log.exception("request %s failed", rid)
            if not state["started"]:
                await self._error(exc, rid, send_with_id)
        finally:
            route = scope.get("route")
            label = str(getattr(route, "path", "unmatched")) if route is not None else "unmatched"
            status = state["status"] or 500
            seconds = time.perf_counter() - t0
            REQUESTS.labels(label, str(status)).inc()
            STAGE_SECONDS.labels("total", label).observe(seconds)
            if self.access_log:
                logs.access(scope, rid, label, status, seconds)

    async def _error(self, exc: BaseException, rid: str, send: Send) -> None:
        status, reason, body = error_body(exc, rid)
        FAILURES.labels(reason).inc()
        headers = error_headers(status, self.retry_after_s, close=isinstance(exc, BodyBudgetExceeded))
        if isinstance(exc, MethodNotAllowed):
            headers["allow"] = exc.allow
        for message in json_answer(status, body, headers):
            await send(message)

    async def _admitted(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = _header(scope, b"content-length")
        declared = int(length) if length is not None and length.isdigit() and len(length) < 19 else None
        if declared is not None and declared > self.max_body_bytes:
            raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {self.max_body_bytes}")
        reserved = [declared if declared is not None else min(CHUNKED_RESERVE, self.max_body_bytes)]
        refused = self.admission.try_take(reserved[0])
        if refused is not None:
            ADMISSION.labels("refused").inc()
            scope["route"] = _route_of(scope)
            raise Overloaded(refused)
        ADMISSION.labels("admitted").inc()
        try:
            await self.app(scope, self._bounded(receive, reserved), send)
        finally:
            self.admission.give(reserved[0])

    def _bounded(self, receive: Receive, reserved: list[int]) -> Receive:
        """The body must arrive within body_timeout_s of the request, stay under the byte limit and
        within its reservation (`reserved[0]`, extended for chunked bodies as they arrive)."""
        deadline = time.monotonic() + self.body_timeout_s
        seen = 0
        done = False

        async def bounded() -> Message:
            nonlocal seen, done
            if done:  # past the body: disconnect watching, no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise BodyTimeout(
                    f"the request body did not arrive within {self.body_timeout_s:g} s "
                    "(shorter than its Content-Length, or too slow)"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise PayloadTooLarge(f"body exceeds the limit of {self.max_body_bytes} bytes")
                if seen > reserved[0]:
                    extra = max(seen - reserved[0], CHUNKED_RESERVE)
                    if not self.admission.extend(extra):
                        in_flight, limit = self.admission.bytes, self.admission.max_bytes
                        raise BodyBudgetExceeded(
                            f"{in_flight} body bytes in flight (limit {limit}); retry later"
                        )
                    reserved[0] += extra
                done = not message.get("more_body", False)
            return message

        return bounded


class _Template:
    """The route label for answers given before routing (refused at admission)."""

    def __init__(self, path: str) -> None:
        self.path = path


def _route_of(scope: Scope) -> _Template:
    return _Template(scope["path"]) if scope["path"] in ADMITTED_PATHS else _Template("unmatched")
