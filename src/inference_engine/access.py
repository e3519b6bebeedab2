"""Who may call, and how often: API keys and rate limits, the same for every transport.

Keys are stored only as SHA-256 digests; a presented key is hashed and compared with every
configured digest in constant time, so neither timing nor an early exit tells how close a
guess was. Rate limits apply per key, or per client address when auth is off (and to failed
authentication attempts, which slows down guessing). HTTP asks through its middleware
(``api/access.py``), gRPC through its call wrapper (``rpc/call.py``); one :class:`AccessPolicy`
serves both, so a key has one limit whichever protocol it speaks.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from inference_engine.errors import Forbidden, RateLimited, Unauthorized
from inference_engine.metrics import Metrics
from inference_engine.ratelimit import BucketStore, Decision, InMemoryBuckets, RateLimiter
from inference_engine.ratelimit_redis import RedisBuckets
from inference_engine.settings import AuthSettings, RateLimitSettings
from inference_engine.tenancy import Caller, FairnessSettings, Tenants


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


def bearer_or_api_key(authorization: str, api_key: str) -> str | None:
    """The key from an ``Authorization: Bearer <key>`` value, else from an ``X-API-Key`` value."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return api_key.strip() or None


@dataclass(frozen=True)
class Grant:
    """An admitted call: the rate limit's figures (``None``: no limit applies) and its caller
    (tenant and priority, for the fair queue)."""

    decision: Decision | None
    caller: Caller


class AccessPolicy:
    """Authenticate, authorise model control, then rate-limit one call."""

    def __init__(
        self, auth: AuthSettings, limiter: RateLimiter | None, fairness: FairnessSettings | None = None
    ) -> None:
        self.auth = auth
        self.tenants = Tenants(fairness or FairnessSettings())
        self.keys = ApiKeys(auth.api_key_hashes + auth.admin_key_hashes + self.tenants.settings.key_hashes())
        self.admin_keys = ApiKeys(auth.admin_key_hashes)
        self.limiter = limiter

    @classmethod
    def from_settings(
        cls,
        auth: AuthSettings,
        rate_limit: RateLimitSettings,
        metrics: Metrics | None = None,
        fairness: FairnessSettings | None = None,
    ) -> AccessPolicy:
        if not rate_limit.enabled:
            return cls(auth, None, fairness)
        store: BucketStore = (
            RedisBuckets(rate_limit, metrics)
            if rate_limit.backend == "redis"
            else InMemoryBuckets(rate_limit.max_clients)
        )
        return cls(auth, RateLimiter(rate_limit, store), fairness)

    async def aclose(self) -> None:
        """Release the rate limiter's store (a Redis connection pool)."""
        if self.limiter is not None:
            await self.limiter.aclose()

    async def check(
        self, key: str | None, client: str, *, operational: bool, admin: bool, priority: str | None = None
    ) -> Grant:
        """Raise ``Unauthorized``, ``Forbidden``, ``RateLimited`` (or ``BadRequest`` for a
        ``priority`` that is no class), or admit the call.

        ``operational``: a probe or a scrape (no key unless ``auth.protect_operational``, never
        limited); ``admin``: model control (admin keys only). Returns the rate-limit decision
        whose figures the answer reports and the caller: the key's tenant, ``priority`` lowered
        to what the tenant may use.
        """
        digest: str | None = None
        if self.auth.enabled and not (operational and not self.auth.protect_operational):
            digest = self.keys.verify(key) if key else None
            if digest is None:
                await self._limit(f"addr:{client}")  # failed attempts count against the address
                raise Unauthorized("a valid API key is required (Authorization: Bearer <key>)")
            if admin and self.admin_keys.verify(key or "") is None:
                raise Forbidden("model control needs an admin key (auth.admin_key_hashes)")
            client = digest
        caller = self.tenants.caller(digest, None if operational else priority)
        return Grant(None if operational else await self._limit(client), caller)

    async def _limit(self, client: str) -> Decision | None:
        if self.limiter is None:
            return None
        decision = await self.limiter.check(client)
        if not decision.allowed:
            raise RateLimited(
                "too many requests; slow down and retry after the time in Retry-After",
                retry_after_s=decision.retry_after_s,
                headers=decision.headers(),
            )
        return decision
