"""Running the gateway under uvicorn with the connection-level guards a public server needs.

uvicorn bounds idle keep-alive connections but not a request in progress: a client that sends
half its headers, or fewer body bytes than its Content-Length, holds a connection (and a file
handle) for ever. `guarded_protocol` adds, per connection:
- a header deadline: from the connection (or a request's first byte) to its last header line;
- a message deadline: from the headers to the body's last byte (the front door answers an
  inference request's late body with a 408 first, service/asgi.py);
- a cap on open connections: beyond `max_connections`, new ones are closed at once.
Each closing is counted in `pulsefm_connections_refused_total{reason}`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.metrics import CONNECTIONS, CONNECTIONS_REFUSED
from service.settings import Settings


class _Guarded(HttpToolsProtocol):
    header_timeout_s = 10.0
    message_timeout_s = 61.0
    max_connections = 1024

    _deadline: asyncio.TimerHandle | None = None
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refused = True
            CONNECTIONS_REFUSED.labels("limit").inc()
            transport.abort()
            return
        super().connection_made(transport)
        CONNECTIONS.set(len(self.connections))
        self._arm(self.header_timeout_s, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            return
        super().connection_lost(exc)
        CONNECTIONS.set(len(self.connections))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.header_timeout_s, "header_timeout")

    def on_headers_complete(self) -> None:
        self._arm(self.message_timeout_s, "body_timeout")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # also after an answer given before the body (a 429): the deadline ran until the body ended
        self._disarm()
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def _arm(self, seconds: float, reason: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, reason)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, reason: str) -> None:
        self._deadline = None
        if self.transport is not None and not self.transport.is_closing():
            CONNECTIONS_REFUSED.labels(reason).inc()
            self.transport.close()


def guarded_protocol(settings: Settings) -> type[HttpToolsProtocol]:
    """The httptools protocol with this gateway's header/body deadlines and connection cap."""
    return type(
        "GuardedHttpToolsProtocol",
        (_Guarded,),
        {
            "header_timeout_s": settings.header_timeout_s,
            "message_timeout_s": settings.body_timeout_s + 1.0,
            "max_connections": settings.max_connections,
        },
    )


def uvicorn_config(app: Any, settings: Settings, host: str, port: int, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(settings),
        timeout_keep_alive=max(1, round(settings.keepalive_timeout_s)),
        access_log=False,
        **kwargs,
    )
