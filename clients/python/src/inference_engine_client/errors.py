"""The errors a client call can raise: one tree, so callers can catch as broadly as they like.

The server answers every error as ``{"error": {"type", "message", "request_id"}}`` with a status
that says whose fault it was; the subclasses follow that status, so ``except BadInput`` means
"fix the request, retrying will not help" and ``except Overloaded`` means "come back later".
Failures that never reached the server (:class:`ConnectError`, :class:`Timeout`,
:class:`CircuitOpen`) have no status.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

#: How much of a non-JSON error body (a proxy's HTML page) goes into the message.
_EXCERPT = 200


class InferenceError(Exception):
    """Base of every error the client raises.

    ``status`` is the HTTP status (``None`` when no response came back), ``code`` the server's
    stable ``error.type`` (branch on this, not on ``message``), ``request_id`` the id to quote
    when reading the server's log, ``retry_after`` the server's ``Retry-After`` in seconds.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "client_error",
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        status = f"{self.status} " if self.status is not None else ""
        return f"{status}{self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """The error as the server would have shaped it, plus its status (for JSON output)."""
        return {
            "status": self.status,
            "type": self.code,
            "message": self.message,
            "request_id": self.request_id,
        }


class BadInput(InferenceError):
    """A 4xx other than 429: the request itself is wrong, so it is never retried."""


class Unauthorized(BadInput):
    """401: no API key, or one the server does not accept."""


class NotFound(BadInput):
    """404: no such model (``model_not_found``) or route."""


class Overloaded(InferenceError):
    """429 or 503: the server cannot take this request now; ``retry_after`` says when to return."""


class ServerError(InferenceError):
    """A 5xx other than 503: the model or the server failed (``model_failed``, ``deadline_exceeded``)."""


class CircuitOpen(InferenceError):
    """The client's circuit breaker is open: the call failed fast, without touching the network."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, code="circuit_open", retry_after=retry_after)


class ConnectError(InferenceError):
    """No response: the connection was refused, reset or broken before an answer arrived."""


class Timeout(InferenceError):
    """The connect, read or total timeout ran out before an answer arrived."""


class InvalidResponse(InferenceError):
    """A success status whose body is not what the API documents (a proxy in the way, a new server)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "invalid_response",
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, request_id=request_id, retry_after=retry_after)


def error_from_response(response: httpx.Response, retry_after: float | None = None) -> InferenceError:
    """The typed error for a non-success response, with the server's own code and message."""
    status = response.status_code
    code, message, request_id = _error_fields(response)
    request_id = request_id or response.headers.get("x-request-id")
    kind: type[InferenceError]
    if status in (429, 503):
        kind = Overloaded
    elif status == 401:
        kind = Unauthorized
    elif status == 404:
        kind = NotFound
    elif 400 <= status < 500:
        kind = BadInput
    elif status >= 500:
        kind = ServerError
    else:  # a 1xx/3xx that httpx did not follow: not an answer the client can use
        kind = InvalidResponse
    return kind(message, status=status, code=code, request_id=request_id, retry_after=retry_after)


def _error_fields(response: httpx.Response) -> tuple[str, str, str | None]:
    """``(type, message, request_id)`` from the standard body, or a fallback for any other body."""
    fallback = (f"http_{response.status_code}", _excerpt(response), None)
    try:
        body = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return fallback
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return fallback
    code = error.get("type")
    message = error.get("message")
    request_id = error.get("request_id")
    return (
        code if isinstance(code, str) else fallback[0],
        message if isinstance(message, str) else fallback[1],
        request_id if isinstance(request_id, str) else None,
    )


def _excerpt(response: httpx.Response) -> str:
    text = response.content[:_EXCERPT].decode("utf-8", errors="replace").strip()
    reason = response.reason_phrase or "HTTP error"
    return f"{reason}: {text}" if text else reason
