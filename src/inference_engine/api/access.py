"""Access control in front of every HTTP route: the :class:`~inference_engine.access.AccessPolicy`
(API keys, admin keys, rate limits) asked once per request, its refusals answered here with the
standard error body and its rate-limit figures added to every answer as ``X-RateLimit-*``. The
caller it names (the key's tenant, the ``X-Priority`` allowed) goes into the request context,
where the routes pick it up for the fair queue.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_engine.access import AccessPolicy, bearer_or_api_key
from inference_engine.api.errors import engine_error_response
from inference_engine.errors import EngineError
from inference_engine.logging import current_request

# Probes and scrapers (kubelet, KServe/Triton-style V2 health checks, Prometheus) carry no key.
OPERATIONAL_PATHS = frozenset({"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"})
#: Model control (the V2 repository extension): with auth on, only admin keys.
ADMIN_PREFIX = "/v2/repository"


def presented_key(headers: Headers) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    return bearer_or_api_key(headers.get("authorization", ""), headers.get("x-api-key", ""))


class AccessControlMiddleware:
    """Authenticate, then rate-limit; answers 401/403/429 itself, with the standard error body."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "unknown"
        headers = Headers(scope=scope)
        try:
            grant = await self.policy.check(
                presented_key(headers),
                client,
                operational=scope["path"] in OPERATIONAL_PATHS,
                admin=scope["path"].startswith(ADMIN_PREFIX),
                priority=headers.get("x-priority"),
            )
        except EngineError as exc:
            await engine_error_response(exc)(scope, receive, send)
            return
        ctx = current_request.get()
        if ctx is not None:  # the request-context middleware runs outside this one
            ctx.caller = grant.caller
        decision = grant.decision
        if decision is None:
            await self.app(scope, receive, send)
            return
        extra = [(k.lower().encode(), v.encode()) for k, v in decision.headers().items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
