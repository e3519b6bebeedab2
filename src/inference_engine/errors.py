"""One exception tree for the whole engine.

Every error a client can see is an :class:`EngineError` that carries its HTTP status and a
stable machine-readable ``code``. The API maps them to responses in exactly one place
(``api/errors.py``), so the data plane never imports HTTP types and a new error needs no new
handler.
"""

from __future__ import annotations

import math


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


class InvalidInput(EngineError):
    """The request is well formed HTTP but its content cannot be used (bad image, bad field)."""

    status_code = 422
    code = "invalid_input"


class ImageTooLarge(InvalidInput):
    """Decoded dimensions exceed the configured pixel or side limits (decompression bombs)."""

    code = "image_too_large"


class ImageTooSmall(InvalidInput):
    """Decoded dimensions are below the configured minimum width or height."""

    code = "image_too_small"


class UrlRefused(InvalidInput):
    """An image URL that the fetch policy forbids (scheme, host, or a private address)."""

    code = "url_refused"


class UrlFetchFailed(InvalidInput):
    """An allowed image URL that could not be fetched (timeout, HTTP error, too many redirects)."""

    code = "url_fetch_failed"


class BadRequest(EngineError):
    """The request itself is malformed (missing field, unparsable multipart)."""

    status_code = 400
    code = "bad_request"


class UnsupportedTask(BadRequest):
    """The model cannot do what was asked (embeddings from a classifier, labels for a CNN)."""

    code = "unsupported_task"


class PayloadTooLarge(EngineError):
    """The request body is larger than ``server.max_body_bytes``."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(EngineError):
    """The payload's magic bytes are not one of the accepted image formats."""

    status_code = 415
    code = "unsupported_media_type"


class Unauthorized(EngineError):
    """No API key, or a key that is not accepted."""

    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="inference-engine"'})


class RateLimited(EngineError):
    """This client sent more than its token bucket allows."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, headers: dict[str, str] | None = None) -> None:
        seconds = max(1, math.ceil(retry_after_s))
        super().__init__(message, headers={**(headers or {}), "Retry-After": str(seconds)})
        self.retry_after_s = seconds


class Forbidden(EngineError):
    """Authenticated, but not allowed this operation (model control without an admin key)."""

    status_code = 403
    code = "forbidden"


class LoadFailed(EngineError):
    """A model control load found the folder wrong or a version failing to load; what served
    before still serves."""

    status_code = 400
    code = "load_failed"


class ModelNotFound(EngineError):
    """No model of that name is configured."""

    status_code = 404
    code = "model_not_found"


class ServiceUnavailable(EngineError):
    """Temporarily unable to serve; clients should retry after ``Retry-After``."""

    status_code = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        seconds = max(1, math.ceil(retry_after_s))  # never invite a retry sooner than meant
        super().__init__(message, headers={"Retry-After": str(seconds)})
        self.retry_after_s = seconds


class QueueFull(ServiceUnavailable):
    """The model's bounded queue is full: shed load now rather than hang."""

    code = "queue_full"


class DeadlineUnmeetable(ServiceUnavailable):
    """Predictive admission: the work ahead would not let this request finish by its deadline,
    so it is refused now (with ``Retry-After``) rather than queued to time out."""

    code = "deadline_unmeetable"


class ModelNotReady(ServiceUnavailable):
    """The model is loading, failed to load, or its batch loop is not running."""

    code = "model_not_ready"


class ShuttingDown(ServiceUnavailable):
    """The server is draining and accepts no new work."""

    code = "shutting_down"


class DeadlineExceeded(EngineError):
    """The request was not answered within its deadline."""

    status_code = 504
    code = "deadline_exceeded"


class ModelFailed(EngineError):
    """The model raised while computing this input (or its whole batch)."""

    status_code = 500
    code = "model_failed"


class ClientDisconnected(EngineError):
    """The client went away before its answer was ready (logged as nginx's 499; nobody reads it)."""

    status_code = 499
    code = "client_disconnected"


class ConfigError(Exception):
    """Invalid configuration; the message names the key, the value and where it came from.

    Not an :class:`EngineError`: it stops start-up (exit code 2) and never reaches a client.
    """


class ModelLoadError(Exception):
    """A model folder could not be turned into a working handler; the message names the folder."""
