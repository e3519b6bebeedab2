"""Token buckets in Redis, so that every replica behind one load balancer enforces one limit per key.

Each bucket is a Redis hash (``tokens``, ``updated``) refilled and taken in one Lua script, which
Redis runs atomically: two replicas taking from one bucket at the same instant cannot both spend
its last token. The script reads Redis's own clock (``TIME``), so replicas whose clocks disagree
still refill at one rate, and sets the key to expire once a full bucket would have refilled, so
idle clients cost no memory. This is the same algorithm as the in-process store
(:class:`~inference_engine.ratelimit.InMemoryBuckets`): one round trip per request, no library
beyond ``redis-py`` (rate-limit libraries such as ``limits`` offer fixed or sliding windows, not
the token bucket whose ``burst`` and ``X-RateLimit-*`` figures this server already reports).

Redis is a dependency the server must survive losing. Every call is bounded by
``redis_timeout_s`` (connect and answer, no client-side retries), and after a failure requests
skip Redis for ``redis_retry_interval_s`` rather than each paying the timeout. Meanwhile the fail
mode decides: *open* lets requests through (unlimited, counted in a metric, logged once per
interval), *closed* refuses them with 503 and a ``Retry-After``. Either way no request hangs.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from inference_engine.errors import ServiceUnavailable
from inference_engine.metrics import Metrics
from inference_engine.ratelimit import Decision, bucket_decision
from inference_engine.settings import RateLimitSettings

logger = logging.getLogger(__name__)

#: KEYS[1]: the bucket; ARGV: rate (tokens per second), burst. Returns {allowed, tokens left}.
#: Tokens travel as a string: Redis truncates Lua numbers to integers in replies.
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  tokens = burst
  updated = now
end
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'updated', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {allowed, string.format('%.6f', tokens)}
"""

#: How often a fail-open or fail-closed stretch is logged while it lasts.
LOG_INTERVAL_S = 30.0


class RedisBuckets:
    """A :class:`~inference_engine.ratelimit.BucketStore` in Redis, with a bounded wait and a fail mode."""

    def __init__(
        self, settings: RateLimitSettings, metrics: Metrics | None = None, client: Redis | None = None
    ) -> None:
        if client is None:
            if not settings.redis_url:
                raise ValueError("rate_limit.redis_url is required for backend 'redis'")
            # A bounded pool: a burst of requests shares a few connections instead of each
            # opening its own (a connect storm that slows Redis and trips the timeout on a busy
            # host, which would fail every request open for a retry interval).
            pool = BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=settings.redis_max_connections,
                timeout=settings.redis_timeout_s,  # wait for a free connection
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
                retry=Retry(NoBackoff(), 0),  # a failed call falls to the fail mode, not a retry
                health_check_interval=30,
            )
            client = Redis(connection_pool=pool)
            client.auto_close_connection_pool = True  # aclose() closes the pool it was built with
        self._redis = client
        self._take = client.register_script(TAKE_SCRIPT)
        self._settings = settings
        self._metrics = metrics
        self._skip_until = 0.0  # monotonic time before which Redis is not asked (after a failure)
        self._failed_since: float | None = None
        self._unchecked = 0  # requests decided by the fail mode since the last log line
        self._logged_at = 0.0
        self._set_up(True)

    async def take(self, client: str, rate: float, burst: int, now: float) -> Decision:
        # ``now`` is this process's clock; the script uses Redis's, which every replica shares.
        if time.monotonic() < self._skip_until:
            return self._fail(burst, None)
        try:
            async with asyncio.timeout(self._settings.redis_timeout_s * 2):  # socket timeouts are per read
                allowed, tokens = await self._take(
                    keys=[self._settings.redis_key_prefix + client], args=[repr(rate), burst]
                )
        except (RedisError, OSError, TimeoutError) as exc:
            self._skip_until = time.monotonic() + self._settings.redis_retry_interval_s
            return self._fail(burst, exc)
        self._recovered()
        return bucket_decision(bool(allowed), float(tokens), rate, burst)

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers within the timeout (for start-up logs and tests)."""
        try:
            async with asyncio.timeout(self._settings.redis_timeout_s * 2):
                return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    def _fail(self, burst: int, exc: BaseException | None) -> Decision:
        """Apply the fail mode to one request that Redis could not decide."""
        now = time.monotonic()
        mode = "open" if self._settings.fail_open else "closed"
        if self._failed_since is None:
            self._failed_since = now
            self._set_up(False)
            logger.warning(
                "rate-limit store unreachable (%s); failing %s until it answers",
                f"{type(exc).__name__}: {exc}" if exc else "unknown error",
                mode,
                extra={"error": "rate_limit_store_unavailable"},
            )
            self._logged_at = now
        self._unchecked += 1
        if self._metrics is not None:
            self._metrics.rate_limit_unchecked.labels(
                "allowed" if self._settings.fail_open else "refused"
            ).inc()
        if now - self._logged_at >= LOG_INTERVAL_S:
            logger.warning(
                "rate-limit store still unreachable after %.0f s; %d requests %s without a limit check",
                now - self._failed_since,
                self._unchecked,
                "served" if self._settings.fail_open else "refused",
                extra={"error": "rate_limit_store_unavailable"},
            )
            self._logged_at, self._unchecked = now, 0
        if not self._settings.fail_open:
            raise ServiceUnavailable(
                "the rate limiter's store is unreachable; retry after the time in Retry-After",
                retry_after_s=self._settings.redis_retry_interval_s,
            )
        return Decision(allowed=True, limit=burst, remaining=0, reset_s=0.0, retry_after_s=0.0, known=False)

    def _recovered(self) -> None:
        if self._failed_since is None:
            return
        logger.info(
            "rate-limit store answers again after %.1f s; limits apply again",
            time.monotonic() - self._failed_since,
        )
        self._failed_since, self._unchecked = None, 0
        self._set_up(True)

    def _set_up(self, up: bool) -> None:
        if self._metrics is not None:
            self._metrics.rate_limit_store_up.labels("redis").set(1 if up else 0)
