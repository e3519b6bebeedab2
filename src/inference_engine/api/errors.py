"""The one place where errors become HTTP responses.

Every error body is ``{"error": {"type", "message", "request_id"}}``, except on the Open Inference
Protocol's routes (the request context says so), whose clients expect ``{"error": "<message>"}``.
Engine errors carry their own status and headers; FastAPI's validation errors and Starlette's
HTTP errors are reshaped to the same body; anything else is a 500 whose stack goes to the log
and never to the client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference_engine.errors import EngineError
from inference_engine.logging import current_request

logger = logging.getLogger("inference_engine.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Build the standard error body for the current request."""
    ctx = current_request.get()
    request_id = ctx.request_id if ctx is not None else None
    body: dict[str, Any] = {"error": {"type": code, "message": message, "request_id": request_id}}
    if ctx is not None:
        ctx.error = code
        if ctx.protocol == "v2":
            body = {"error": message}  # the Open Inference Protocol's error shape
    return JSONResponse(body, status_code=status, headers=headers)


def engine_error_response(exc: EngineError) -> JSONResponse:
    if exc.status_code >= 500:
        logger.warning("request failed: %s", exc.message, extra={"error": exc.code})
    return error_response(exc.status_code, exc.code, exc.message, exc.headers)


async def _engine_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EngineError)
    return engine_error_response(exc)


def _describe_validation(exc: RequestValidationError) -> str:
    parts: list[str] = []
    for err in exc.errors():
        loc: list[Any] = [p for p in err.get("loc", ()) if p not in ("query", "path", "header", "body")]
        where = ".".join(str(p) for p in loc) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, "invalid_input", _describe_validation(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, dict(exc.headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above (unexpected exceptions are handled by the middleware)."""
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
