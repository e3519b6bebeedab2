"""Request context middleware: request id, the access log line, request metrics, last-resort 500.

A pure ASGI middleware (no ``BaseHTTPMiddleware``): it adds no task per request and sees the
exact status that went out.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Sequence
from typing import Literal

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_engine.accesslog import record_request
from inference_engine.api.access import OPERATIONAL_PATHS
from inference_engine.api.errors import error_response
from inference_engine.logging import RequestContext, current_request
from inference_engine.metrics import Metrics
from inference_engine.requestid import RequestIds

error_logger = logging.getLogger("inference_engine.api")

_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
# The interactive API docs load Swagger UI / ReDoc scripts; everything else is data.
_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_CSP_EXEMPT = ("/docs", "/redoc")
# A response may set these two itself (the playground page's own CSP, its assets' revalidation);
# the defaults above fill in only what it left unset. The other security headers always apply.
_OWN_HEADERS = frozenset({b"cache-control", b"content-security-policy"})


def incoming_request_id(headers: list[tuple[bytes, bytes]], ids: RequestIds) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a new one."""
    for key, value in headers:
        if key == b"x-request-id":
            return ids.accept(value.decode("latin-1"))
    return ids.new()


def route_protocol(scope: Scope, v2_routes: Sequence[BaseRoute], prefix: str = "") -> Literal["native", "v2"]:
    """``v2`` when the request matches one of the Open Inference Protocol's routes.

    Known before access control and routing run, so a 401 or 429 on a V2 route is in V2's shape;
    a URL that matches no route keeps the native shape. ``prefix``, the routes' common start,
    spares the route matching for every other request.
    """
    if not scope["path"].startswith(prefix):
        return "native"
    for route in v2_routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            return "v2"
    return "native"


class RequestContextMiddleware:
    def __init__(
        self, app: ASGIApp, metrics: Metrics, access_log: bool = True, v2_routes: Sequence[BaseRoute] = ()
    ) -> None:
        self.app = app
        self.v2_routes = v2_routes
        self.v2_prefix = (
            posixpath.commonpath([getattr(r, "path", "/") for r in v2_routes]) if v2_routes else ""
        )
        self.metrics = metrics
        self.access_log = access_log
        self.request_ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        ctx = RequestContext(
            request_id=incoming_request_id(scope["headers"], self.request_ids),
            started=started,
            protocol=route_protocol(scope, self.v2_routes, self.v2_prefix),
        )
        token = current_request.set(ctx)
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", ctx.request_id.encode("latin-1")))
                if ctx.version is not None and status < 400:
                    headers.append((b"x-model-version", ctx.version.encode("latin-1")))
                if ctx.cached is not None and status < 400:
                    headers.append((b"x-cache", b"hit" if ctx.cached else b"miss"))
                own = {key.lower() for key, _ in headers if key.lower() in _OWN_HEADERS}
                headers.extend(h for h in _SECURITY_HEADERS if h[0] not in own)
                if not scope["path"].startswith(_CSP_EXEMPT) and _CSP[0] not in own:
                    headers.append(_CSP)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            error_logger.exception("unhandled error", extra={"path": scope.get("path")})
            if not response_started:
                response = error_response(500, "internal_error", "internal server error; see the server log")
                await response(scope, receive, send_wrapper)
        finally:
            self._finish(scope, ctx, status, time.monotonic() - started)
            current_request.reset(token)

    def _finish(self, scope: Scope, ctx: RequestContext, status: int, elapsed: float) -> None:
        route = scope.get("route")
        route_path: str = getattr(route, "path", None) or "unmatched"
        record_request(
            self.metrics,
            ctx,
            protocol="http",
            route=route_path,
            status=status,
            elapsed=elapsed,
            log_line=self.access_log and not (route_path in OPERATIONAL_PATHS and status < 400),
            fields={"method": scope.get("method"), "path": scope.get("path")},
        )
