"""Token-bucket rate limiting behind a small store interface.

Each client (API key digest, or address when auth is off) has a bucket of ``burst`` tokens
refilled at ``rate`` per second; a request takes one. The bucket state is two numbers, so a
shared store can hold it when several replicas sit behind one load balancer: implement
:class:`BucketStore` over Redis (one hash per client with ``tokens`` and ``updated``, the
take-and-refill done atomically in a Lua script, keys expiring after ``burst / rate`` seconds)
and pass it to :class:`RateLimiter`. The in-process store below is the default.
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

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_s)),
        }


class BucketStore(Protocol):
    """Where bucket state lives; ``take`` must refill and take atomically."""

    def take(self, client: str, rate: float, burst: int, now: float) -> Decision: ...


class InMemoryBuckets:
    """Buckets in this process, at most ``max_clients`` of them (least recently seen evicted)."""

    def __init__(self, max_clients: int) -> None:
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, updated

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str, rate: float, burst: int, now: float) -> Decision:
        tokens, updated = self._buckets.pop(client, (float(burst), now))
        tokens = min(float(burst), tokens + (now - updated) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return Decision(
            allowed=allowed,
            limit=burst,
            remaining=int(tokens),
            reset_s=(burst - tokens) / rate,
            retry_after_s=0.0 if allowed else (1.0 - tokens) / rate,
        )


class RateLimiter:
    """Applies the configured rate and burst (or a client's override) through a store."""

    def __init__(self, settings: RateLimitSettings, store: BucketStore | None = None) -> None:
        self._settings = settings
        self._store = store if store is not None else InMemoryBuckets(settings.max_clients)

    def check(self, client: str, now: float | None = None) -> Decision:
        override = self._settings.overrides.get(client)
        rate = override.rate if override else self._settings.rate
        burst = override.burst if override else self._settings.burst
        return self._store.take(client, rate, burst, time.monotonic() if now is None else now)
