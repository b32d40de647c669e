"""Running the gateway under uvicorn with the connection-level guards a public server needs.

uvicorn bounds idle keep-alive connections but not a request in progress: a client that sends
half its headers, or fewer body bytes than its Content-Length, holds a connection (and a file
handle) for ever. `guarded_protocol` adds, per connection:
- a header deadline: from the connection (or a request's first byte) to its last header line;
- a message deadline: from the headers to the body's last byte (the front door answers an
  inference request's late body with a 408 first, service/asgi.py);
- a cap on the request line + headers (`max_header_bytes`): beyond it, 431 and close;
- a cap on open connections: beyond `max_connections`, new ones are closed at once.
Each closing is counted in `pulsefm_connections_refused_total{reason}`. A deadline is a time kept
per connection, checked by one sweep per server (`_sweep`), not a timer per request.

An answer goes out in one write: uvicorn writes the head when the app starts its answer and the
body when it sends it, two `send()` system calls, and each lets go of the GIL, which the event loop
then waits to get back behind the CPU threads. `_JoinedWrites` holds the head until the answer's
first body message and writes both at once.

It also refuses overload at the cheapest point: when every admission slot is taken, an inference
request gets its 429 from `on_headers_complete`, before an ASGI task, a scope or the body exist
(the gateway is GIL-bound: each refusal's Python time is taken from admitted work). The front door
(service/asgi.py) stays the authority: it takes the slots, and refuses whatever passes here. This
path is taken only when it cannot change what the client sees: no earlier request of the
connection still answering (pipelining), keep-alive, no `Expect: 100-continue`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.asgi import (
    ADMITTED_PATHS,
    Admission,
    answer_bytes,
    count_connection_answer,
    count_refusal,
    refusal_bytes,
    request_id,
)
from service.errors import INTERNAL, HeadersTooLarge, HeadTimeout, MalformedHttp, UriTooLong, classify
from service.metrics import CONNECTIONS, CONNECTIONS_REFUSED
from service.settings import Settings

log = logging.getLogger("pulsefm.gateway")


class _Answered:
    """Stands in for uvicorn's cycle of a request answered here: uvicorn then drops its body."""

    response_complete = True
    disconnected = False
    keep_alive = True

    def __init__(self) -> None:
        self.message_event = asyncio.Event()


class _JoinedWrites:
    """A connection's transport whose writes are held while `hold()` is in effect and then written
    together (`release()`); close() writes what is held first, abort() drops it. Anything else is
    the transport's own."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.held: list[bytes] | None = None

    def hold(self) -> None:
        if self.held is None:
            self.held = []

    def release(self) -> None:
        held, self.held = self.held, None
        if held:
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.held is None:
            self.transport.write(data)
        elif data:
            self.held.append(bytes(data))

    def close(self) -> None:
        self.release()
        self.transport.close()

    def abort(self) -> None:
        self.held = None
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _Guarded(HttpToolsProtocol):
    header_timeout_s = 10.0
    message_timeout_s = 61.0
    max_connections = 1024
    max_header_bytes = 65536
    admission: Admission | None = None
    retry_after_s = 1

    _due = math.inf  # loop time when the current deadline falls due (checked by _sweep)
    _due_reason = ""
    _refused = False
    _answered_early = False
    _head_bytes = -1  # bytes of the current request's head in earlier reads; -1: headers complete
    _head_began_now = False  # the request began in the read being parsed (its share is unknown)
    _head_refused = False
    _upgrade_asked = False  # the request being parsed asked to upgrade (see _feed)
    _last_answer: bytes | None = None  # written when the earlier answers are (_answer_and_close)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refused = True
            CONNECTIONS_REFUSED.labels("limit").inc()
            transport.abort()
            return
        # uvicorn's connection_made (0.54) without its getsockname() / getpeername() calls: each
        # releases the GIL, and the event loop then waits for a CPU thread to hand it back (up to
        # the switch interval); asyncio's transport holds both addresses already. With a new
        # connection per request at 4x capacity: 18-40 % more goodput, 429 p99 119-186 vs 190-199 ms
        # (3 rounds each, 2026-12-02). Trace-level connection logging is left out.
        self.connections.add(self)
        self.writes = _JoinedWrites(transport)
        self.transport = self.writes  # type: ignore[assignment]
        self.flow = FlowControl(transport)
        self.server = _address(transport.get_extra_info("sockname"))
        self.client = _address(transport.get_extra_info("peername"))
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        CONNECTIONS.set(len(self.connections))
        if not hasattr(self.server_state, "deadline_sweep"):  # the server's first connection
            tick = min(self.header_timeout_s, self.message_timeout_s, self.timeout_keep_alive) / 4
            _sweep(self.server_state, self.loop, min(max(tick, 0.05), 1.0))
        self._arm(self.header_timeout_s, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            return
        super().connection_lost(exc)
        CONNECTIONS.set(len(self.connections))

    def on_message_begin(self) -> None:
        # a request that began in the same read as the end of an early-refused one: the keep-alive
        # timer armed at that end (on_message_complete) must not run during this request
        self._unset_keepalive_if_required()
        super().on_message_begin()
        self._head_bytes, self._head_began_now = 0, True
        self._arm(self.header_timeout_s, "header_timeout")

    def on_headers_complete(self) -> None:
        self._head_bytes = -1
        if self.parser.should_upgrade():  # parsed again without its Upgrade header (_without_upgrade)
            self._upgrade_asked = True
            return
        self._arm(self.message_timeout_s, "body_timeout")
        if self.admission is not None and self.admission.full() and self._refuse_early():
            return
        super().on_headers_complete()

    def _refuse_early(self) -> bool:
        if self.parser.get_method() != b"POST" or self.expect_100_continue:
            return False
        if not (self.cycle is None or self.cycle.response_complete) or not self.parser.should_keep_alive():
            return False
        path = httptools.parse_url(self.url).path.decode("latin-1")
        if path not in ADMITTED_PATHS:
            return False
        t0 = time.perf_counter()
        rid = request_id(next((v.decode("latin-1") for k, v in self.headers if k == b"x-request-id"), None))
        assert self.admission is not None
        detail = (
            f"{self.admission.requests} requests in flight (limit {self.admission.max_requests}); retry later"
        )
        self.transport.write(refusal_bytes(rid, detail, self.retry_after_s))
        self.cycle = _Answered()  # type: ignore[assignment]
        self._answered_early = True
        count_refusal(path, time.perf_counter() - t0)
        return True

    def on_message_complete(self) -> None:
        if self._upgrade_asked:
            return
        # also after an answer given before the body (a 429): the deadline ran until the body ended
        self._disarm()
        super().on_message_complete()
        if self._answered_early:  # the connection is idle again: uvicorn's keep-alive deadline
            self._answered_early = False
            self._unset_keepalive_if_required()
            self._arm(self.timeout_keep_alive, "keepalive")

    def data_received(self, data: bytes) -> None:
        if self._refused or self._head_refused:
            return
        self._head_began_now = False
        self._feed(data)
        # a request whose headers are still incomplete after this read: count the read (a read in
        # which the request began is not counted, so the bound is the limit plus one read)
        if self._head_bytes >= 0 and not self._head_began_now:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse_head()

    def _feed(self, data: bytes) -> None:
        """uvicorn's data_received, except for two answers: bytes that are not HTTP get a 400 that
        says what the parser found; a request that asks to upgrade (h2c, websocket: this gateway
        speaks HTTP/1.1 only) is served as the plain HTTP/1.1 request it also is. httptools takes
        whatever follows such a request's head for the other protocol: its body was lost (the app
        saw an empty one) and the next request on the connection hung."""
        self._unset_keepalive_if_required()
        pending: bytes | None = data
        while pending is not None:  # a loop, not recursion: a read may hold many upgrade requests
            try:
                self.parser.feed_data(pending)
                return
            except httptools.HttpParserCallbackError as exc:  # raised in a callback (uvicorn's or ours)
                self._answer_and_close(_callback_problem(exc.__context__))
                return
            except httptools.HttpParserError as exc:
                self._answer_and_close(MalformedHttp(f"not an HTTP/1.1 request: {exc}"))
                return
            except httptools.HttpParserUpgrade as upgrade:
                pending = self._without_upgrade(pending[upgrade.args[0] :])

    def _without_upgrade(self, rest: bytes) -> bytes | None:
        """A new parser for the request that asked to upgrade, and what to feed it: its head
        without the Upgrade header, then `rest` (its body and whatever followed). None when the
        request was answered instead (CONNECT)."""
        method = self.parser.get_method()
        if not self._upgrade_asked or method == b"CONNECT":  # CONNECT is an upgrade by itself
            self._answer_and_close(MalformedHttp(f"{method.decode('latin-1')} is not served here"))
            return None
        self._upgrade_asked = False
        head = b"".join(
            [method, b" ", self.url, b" HTTP/", self.parser.get_http_version().encode(), b"\r\n"]
            + [name + b": " + value + b"\r\n" for name, value in self.headers if name != b"upgrade"]
            + [b"\r\n"]
        )
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's own parser
        return head + rest

    def _refuse_head(self) -> None:
        self._answer_and_close(HeadersTooLarge("request line and headers exceed the limit"))

    def _answer_and_close(self, exc: BaseException) -> None:
        """An answer from the error table written by the connection itself (there is no request to
        give the app), counted like the app's answers under the route label "unmatched"; then the
        connection closes. Earlier requests of the connection that are whole and still being
        answered (pipelining) are answered first: nothing more is read, and the answer waits."""
        rid = request_id(None)
        if classify(exc) == INTERNAL:
            log.error("request %s failed while its head was parsed", rid, exc_info=exc)
        CONNECTIONS_REFUSED.labels(count_connection_answer(exc)).inc()
        self._head_refused = True  # data_received reads nothing more
        # the answer to a HEAD has no body (llhttp keeps the last method it parsed: a garbage
        # request pipelined after a HEAD also gets the head only, then the close)
        head_only = self.parser.get_method() == b"HEAD"
        self._last_answer = answer_bytes(exc, rid, {"connection": "close"}, head_only)
        earlier = self.cycle is not None and not self.cycle.response_complete and not self.cycle.more_body
        if not (earlier or self.pipeline):
            self._write_last_answer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the last request parsed (self.cycle) answered: every earlier one was
        answered = not self.pipeline and (self.cycle is None or self.cycle.response_complete)
        if self._last_answer is not None and answered and not self.transport.is_closing():
            self._write_last_answer()

    def _write_last_answer(self) -> None:
        assert self._last_answer is not None
        self._unset_keepalive_if_required()
        self.transport.write(self._last_answer)
        self._last_answer = None
        self.transport.close()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """The answer's head waits for its first body message (one write for both); an answer the
        app left unfinished (the front door's write deadline, or a crash after the first byte)
        aborts the connection: uvicorn's close() would wait to flush a buffer that a client that
        does not read never drains."""
        writes = self.writes

        async def joined(message: Any, send: Any) -> None:
            if message["type"] == "http.response.start":
                writes.hold()
                await send(message)
                return
            try:
                await send(message)
            finally:
                writes.release()

        async def then_abort_unfinished(scope: Any, receive: Any, send: Any) -> None:
            try:
                await app(scope, receive, lambda message: joined(message, send))
            finally:
                writes.release()
                if cycle.response_started and not cycle.response_complete:
                    CONNECTIONS_REFUSED.labels("unfinished_answer").inc()
                    writes.abort()

        super()._start_asgi_task(cycle, then_abort_unfinished)

    def _arm(self, seconds: float, reason: str) -> None:
        """The connection's one deadline, from now: a time to compare, no timer. A timer per
        deadline was three `call_later` and three cancellations per request (a sixth of an early
        refusal's time on the event loop); one sweep per server checks every connection instead."""
        self._due, self._due_reason = self.loop.time() + seconds, reason

    def _disarm(self) -> None:
        self._due = math.inf

    def _expire(self) -> None:
        reason, self._due = self._due_reason, math.inf
        if self.transport is None or self.transport.is_closing():
            return
        if reason == "keepalive":
            self.timeout_keep_alive_handler()
        elif reason == "header_timeout" and self._head_bytes >= 0:  # a request began: say why it ends
            self._answer_and_close(
                HeadTimeout(f"the request line and headers did not arrive within {self.header_timeout_s:g} s")
            )
        else:  # a connection that never sent a byte, or a body the front door did not end: no answer
            CONNECTIONS_REFUSED.labels(reason).inc()
            self.transport.close()


def _sweep(server_state: Any, loop: asyncio.AbstractEventLoop, tick: float) -> None:
    """Close the connections of one server whose deadline has passed, then again in `tick` s (a
    deadline holds to within a tick: 1 s for the default 10 s header deadline)."""
    server_state.deadline_sweep = loop.call_later(tick, _sweep, server_state, loop, tick)  # first
    now = loop.time()
    for connection in list(server_state.connections):
        if isinstance(connection, _Guarded) and connection._due <= now:
            connection._expire()


def _callback_problem(raised: BaseException | None) -> BaseException:
    """What an exception raised inside a parser callback says about the request: a request target
    httptools cannot parse (its length is capped at 65535 bytes) is the client's; anything else is
    a bug (a 500 whose traceback is logged)."""
    if isinstance(raised, httptools.HttpParserInvalidURLError):
        if "too long" in str(raised):
            return UriTooLong(str(raised))
        return MalformedHttp(f"not a valid request target: {raised}")
    return raised if raised is not None else RuntimeError("a parser callback failed")


def _address(info: Any) -> tuple[str, int] | None:
    """A transport's sockname / peername as uvicorn gives it to the app: (host, port) for TCP (the
    gateway listens on TCP only, `pulse-fm serve --host --port`)."""
    if isinstance(info, list | tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


def guarded_protocol(settings: Settings, admission: Admission | None = None) -> type[HttpToolsProtocol]:
    """The httptools protocol with this gateway's deadlines, connection cap and early refusals
    (`admission`: the app's own, see `create_app`)."""
    return type(
        "GuardedHttpToolsProtocol",
        (_Guarded,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "message_timeout_s": settings.body_timeout_s + 1.0,
            "max_connections": settings.max_connections,
            "max_header_bytes": settings.max_header_bytes,
            "admission": admission,
            "retry_after_s": settings.retry_after_s,
        },
    )


def uvicorn_config(app: Any, settings: Settings, host: str, port: int, **kwargs: Any) -> uvicorn.Config:
    admission = getattr(getattr(app, "state", None), "admission", None)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(settings, admission),
        timeout_keep_alive=max(1, round(settings.keepalive_timeout_s)),
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)),
        access_log=False,
        loop=settings.event_loop,
        **kwargs,
    )
