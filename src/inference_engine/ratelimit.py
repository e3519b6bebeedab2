"""Token-bucket rate limiting behind a small store interface.

Each client (API key digest, or address when auth is off) has a bucket of ``burst`` tokens
refilled at ``rate`` per second; a request takes one. The bucket state is two numbers, so a
shared store can hold it when several replicas sit behind one load balancer
(:mod:`inference_engine.ratelimit_redis`); the in-process store below is the default. Stores are
asynchronous so that a networked one never blocks the event loop.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

from inference_engine.settings import RateLimitSettings


@dataclass(frozen=True)
class Decision:
    """The outcome of one take, with what the ``X-RateLimit-*`` headers report."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float
    #: False when the shared store could not be asked and the request was let through (fail
    #: open): no figures to report, so no ``X-RateLimit-*`` headers.
    known: bool = True

    def headers(self) -> dict[str, str]:
        if not self.known:
            return {}
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_s)),
        }


class BucketStore(Protocol):
    """Where bucket state lives; ``take`` must refill and take atomically."""

    async def take(self, client: str, rate: float, burst: int, now: float) -> Decision: ...

    async def aclose(self) -> None: ...


def bucket_decision(allowed: bool, tokens: float, rate: float, burst: int) -> Decision:
    """The decision for a bucket left holding ``tokens`` after the take (whichever store ran it)."""
    return Decision(
        allowed=allowed,
        limit=burst,
        remaining=int(tokens),
        reset_s=(burst - tokens) / rate,
        retry_after_s=0.0 if allowed else (1.0 - tokens) / rate,
    )


class InMemoryBuckets:
    """Buckets in this process, at most ``max_clients`` of them (least recently seen evicted)."""

    def __init__(self, max_clients: int) -> None:
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, updated

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, client: str, rate: float, burst: int, now: float) -> Decision:
        tokens, updated = self._buckets.pop(client, (float(burst), now))
        tokens = min(float(burst), tokens + (now - updated) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return bucket_decision(allowed, tokens, rate, burst)

    async def aclose(self) -> None:
        """Nothing to release."""


class RateLimiter:
    """Applies the configured rate and burst (or a client's override) through a store."""

    def __init__(self, settings: RateLimitSettings, store: BucketStore | None = None) -> None:
        self._settings = settings
        self._store = store if store is not None else InMemoryBuckets(settings.max_clients)

    async def check(self, client: str, now: float | None = None) -> Decision:
        override = self._settings.overrides.get(client)
        rate = override.rate if override else self._settings.rate
        burst = override.burst if override else self._settings.burst
        return await self._store.take(client, rate, burst, time.monotonic() if now is None else now)

    async def aclose(self) -> None:
        await self._store.aclose()
