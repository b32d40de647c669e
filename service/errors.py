"""Every error the gateway answers with, and the one table that turns an exception into HTTP.

Anything not in `ERRORS` is a bug: it becomes a generic 500 whose body names only the request
id (the traceback goes to the log under that id), on a connection that stays usable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect


@dataclass
class Problem:
    reason: str  # machine-readable: shape, channels, too_short, nonfinite, flat_line, out_of_range, ...
    detail: str
    segment: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"segment": self.segment, "reason": self.reason, "detail": self.detail}


class ValidationFailed(ValueError):
    """The request or its signal is unusable; `problems` says where and why (422)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.detail for p in problems))
        self.problems = problems


class NonFiniteOutput(ValidationFailed):
    """The model produced NaN/inf for these inputs: never returned, never cached (422)."""


class PayloadTooLarge(ValueError):
    pass


class UnsupportedEncoding(ValueError):
    """A body sent with a Content-Encoding the gateway does not decode (gzip, br, ...): 415."""


class BodyTimeout(TimeoutError):
    """The client did not send its whole body in time (slow or short body)."""


class HeadTimeout(TimeoutError):
    """A request began but its line and headers did not all arrive in time (slow or half-sent head)."""


class Unauthorized(PermissionError):
    """No key, or a key the gateway does not know (401)."""


class Forbidden(PermissionError):
    """A known key without the role the route needs, or admin routes not configured (403)."""


class UnknownModel(LookupError):
    """No such modality or version in the repository."""


class NotFound(LookupError):
    """No route at this path (404); the router's own answer, through the table."""


class MethodNotAllowed(LookupError):
    """The route exists but not for this method (405); `allow` is the Allow header."""

    def __init__(self, detail: str, allow: str) -> None:
        super().__init__(detail)
        self.allow = allow


class MalformedHttp(ValueError):
    """Bytes that are not an HTTP/1.1 request (400, then close); answered by the connection."""


class UriTooLong(ValueError):
    """A request target longer than the HTTP parser takes (414, then close)."""


class HeadersTooLarge(ValueError):
    """Request line + headers over `max_header_bytes` (431, then close); answered by the connection."""


class Gone(LookupError):
    """A pinned version past its retirement grace period (410); the served versions are named."""


class Overloaded(RuntimeError):
    """Too much in flight; retry after Retry-After seconds."""


class BackendUnavailable(RuntimeError):
    """The inference server cannot be reached or refused the call."""


class NotReady(RuntimeError):
    pass


class ClientGone(ConnectionError):
    """The client disconnected before its answer was ready; its queued work was dropped."""


# exception -> (HTTP status, failure reason label); the one place errors become responses.
# Order matters: the first matching class wins (NonFiniteOutput before ValidationFailed).
ERRORS: dict[type[BaseException], tuple[int, str]] = {
    NonFiniteOutput: (422, "non_finite_output"),
    ValidationFailed: (422, "validation"),
    PayloadTooLarge: (413, "too_large"),
    UnsupportedEncoding: (415, "unsupported_encoding"),
    BodyTimeout: (408, "body_timeout"),
    HeadTimeout: (408, "header_timeout"),
    Unauthorized: (401, "unauthorized"),
    Forbidden: (403, "forbidden"),
    UnknownModel: (404, "unknown_model"),
    NotFound: (404, "not_found"),
    MethodNotAllowed: (405, "method_not_allowed"),
    MalformedHttp: (400, "bad_http"),
    UriTooLong: (414, "uri_too_long"),
    HeadersTooLarge: (431, "headers_too_large"),
    Gone: (410, "gone"),
    Overloaded: (429, "overloaded"),
    BackendUnavailable: (503, "backend_unavailable"),
    NotReady: (503, "not_ready"),
    ClientGone: (499, "client_gone"),
    ClientDisconnect: (499, "client_gone"),  # left while its body was being read (any route)
}
INTERNAL = (500, "internal")


def classify(exc: BaseException) -> tuple[int, str]:
    return next((v for t, v in ERRORS.items() if isinstance(exc, t)), INTERNAL)


def error_body(exc: BaseException, request_id: str) -> tuple[int, str, dict[str, Any]]:
    """(status, reason, JSON body) for `exc`; a 500 says nothing but the request id."""
    status, reason = classify(exc)
    if status == INTERNAL[0]:
        detail = f"internal error; quote request id {request_id} (the traceback is logged under it)"
    else:
        detail = str(exc)
    body: dict[str, Any] = {"error": reason, "detail": detail, "request_id": request_id}
    if isinstance(exc, ValidationFailed):
        body["problems"] = [p.as_dict() for p in exc.problems]
    return status, reason, body
