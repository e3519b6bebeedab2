"""Who may call, and how often: API keys and rate limits, in front of every route.

Keys are stored only as SHA-256 digests; a presented key is hashed and compared with every
configured digest in constant time, so neither timing nor an early exit tells how close a
guess was. Rate limits apply per key, or per client address when auth is off (and to failed
authentication attempts, which slows down guessing).
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_engine.api.errors import engine_error_response
from inference_engine.errors import EngineError, Forbidden, RateLimited, Unauthorized
from inference_engine.ratelimit import Decision, RateLimiter
from inference_engine.settings import AuthSettings

# Probes and scrapers (kubelet, KServe/Triton-style V2 health checks, Prometheus) carry no key.
OPERATIONAL_PATHS = frozenset({"/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready"})
#: Model control (the V2 repository extension): with auth on, only admin keys.
ADMIN_PREFIX = "/v2/repository"


def hash_key(key: str) -> str:
    """The hex SHA-256 digest stored in ``auth.api_key_hashes``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    """Checks a presented key against the configured digests in constant time."""

    def __init__(self, digests: list[str]) -> None:
        self._digests = [bytes.fromhex(d) for d in digests]

    def verify(self, key: str) -> str | None:
        """The key's digest when it is accepted, else ``None``."""
        presented = hashlib.sha256(key.encode("utf-8")).digest()
        accepted = False
        for digest in self._digests:  # no early exit: the time does not depend on which matched
            accepted |= hmac.compare_digest(presented, digest)
        return presented.hex() if accepted else None


def presented_key(headers: Headers) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


class AccessControlMiddleware:
    """Authenticate, then rate-limit; answers 401/429 itself, with the standard error body."""

    def __init__(
        self, app: ASGIApp, auth: AuthSettings, limiter: RateLimiter | None, *, enabled_auth: bool
    ) -> None:
        self.app = app
        self.auth = auth
        self.keys = ApiKeys(auth.api_key_hashes + auth.admin_key_hashes)
        self.admin_keys = ApiKeys(auth.admin_key_hashes)
        self.limiter = limiter
        self.enabled_auth = enabled_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        operational = scope["path"] in OPERATIONAL_PATHS
        client = scope["client"][0] if scope.get("client") else "unknown"
        try:
            if self.enabled_auth and not (operational and not self.auth.protect_operational):
                key = presented_key(Headers(scope=scope))
                digest = self.keys.verify(key) if key else None
                if digest is None:
                    self._limit(f"addr:{client}")  # failed attempts count against the address
                    raise Unauthorized("a valid API key is required (Authorization: Bearer <key>)")
                if scope["path"].startswith(ADMIN_PREFIX) and self.admin_keys.verify(key or "") is None:
                    raise Forbidden("model control needs an admin key (auth.admin_key_hashes)")
                client = digest
            decision = None if operational else self._limit(client)
        except EngineError as exc:
            await engine_error_response(exc)(scope, receive, send)
            return
        if decision is None:
            await self.app(scope, receive, send)
            return
        extra = [(k.lower().encode(), v.encode()) for k, v in decision.headers().items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _limit(self, client: str) -> Decision | None:
        if self.limiter is None:
            return None
        decision = self.limiter.check(client)
        if not decision.allowed:
            raise RateLimited(
                "too many requests; slow down and retry after the time in Retry-After",
                retry_after_s=decision.retry_after_s,
                headers=decision.headers(),
            )
        return decision
