"""Token buckets in a real ``redis-server``: one bucket per key across stores, atomic under
concurrency, bounded waits, and the fail modes while Redis is down or silent."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from inference_engine.errors import ServiceUnavailable
from inference_engine.metrics import Metrics
from inference_engine.ratelimit import RateLimiter
from inference_engine.ratelimit_redis import RedisBuckets
from inference_engine.settings import RateLimitSettings
from tests.helpers import RedisServer, metric_value

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed (apt-get install redis-server)",
)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def settings(url: str, **overrides: object) -> RateLimitSettings:
    values: dict[str, object] = {"enabled": True, "backend": "redis", "redis_url": url, "rate": 1, "burst": 3}
    return RateLimitSettings.model_validate({**values, **overrides})


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[tuple[RateLimiter, RateLimiter]]:
    """Two limiters with their own connections to one Redis: two replicas of the server."""
    config = settings(redis_server.url)
    first, second = RateLimiter(config, RedisBuckets(config)), RateLimiter(config, RedisBuckets(config))
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_replicas_take_from_one_bucket_per_key(replicas: tuple[RateLimiter, RateLimiter]) -> None:
    first, second = replicas
    decisions = [
        await first.check("k"),
        await second.check("k"),
        await first.check("k"),
        await second.check("k"),
    ]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert 0 < decisions[3].retry_after_s <= 1.0  # one token a second
    assert decisions[3].headers()["X-RateLimit-Limit"] == "3"
    assert (await second.check("other")).remaining == 2  # keys have their own buckets


async def test_the_bucket_refills_at_the_rate_on_redis_time(redis_server: RedisServer) -> None:
    config = settings(redis_server.url, rate=20, burst=2)
    limiter = RateLimiter(config, RedisBuckets(config))
    assert [(await limiter.check("k")).allowed for _ in range(3)] == [True, True, False]
    await asyncio.sleep(0.06)  # 1.2 tokens at 20 per second
    assert [(await limiter.check("k")).allowed for _ in range(2)] == [True, False]
    await limiter.aclose()


async def test_concurrent_takes_never_spend_a_token_twice(redis_server: RedisServer) -> None:
    # A generous timeout: this is about atomicity, not latency, on whatever the host is doing.
    config = settings(redis_server.url, rate=0.001, burst=50, redis_timeout_s=2)
    first, second = RateLimiter(config, RedisBuckets(config)), RateLimiter(config, RedisBuckets(config))
    decisions = await asyncio.gather(
        *(limiter.check("hot") for _ in range(100) for limiter in (first, second))
    )
    assert sum(d.allowed for d in decisions) == 50
    await first.aclose()
    await second.aclose()


async def test_a_burst_shares_a_bounded_pool_of_connections(redis_server: RedisServer) -> None:
    config = settings(redis_server.url, burst=1000, redis_max_connections=4, redis_timeout_s=2)
    store = RedisBuckets(config)
    limiter = RateLimiter(config, store)
    decisions = await asyncio.gather(*(limiter.check(f"k{i % 7}") for i in range(200)))
    assert all(d.allowed and d.known for d in decisions)  # every one decided by Redis
    clients = await store._redis.info("clients")
    assert clients["connected_clients"] <= 4  # not one connection per request in the burst
    await store.aclose()


async def test_idle_buckets_expire(redis_server: RedisServer) -> None:
    config = settings(redis_server.url, rate=10, burst=5, redis_key_prefix="test:")
    store = RedisBuckets(config)
    await RateLimiter(config, store).check("k")
    ttl_ms = await store._redis.pttl("test:k")
    assert 0 < ttl_ms <= 1100  # one token to refill (100 ms) plus a second of slack
    await store.aclose()


async def test_fail_open_serves_counts_and_logs_once_then_recovers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    config = settings(redis_server.url, burst=1, redis_retry_interval_s=0.3)
    limiter = RateLimiter(config, RedisBuckets(config, metrics))
    assert (await limiter.check("k")).allowed
    assert not (await limiter.check("k")).allowed
    redis_server.stop()

    caplog.set_level(logging.WARNING, logger="inference_engine.ratelimit_redis")
    started = time.monotonic()
    decisions = [await limiter.check("k") for _ in range(20)]
    assert time.monotonic() - started < 1.0  # refused connections, then skipped: no waiting
    assert all(d.allowed and not d.known and d.headers() == {} for d in decisions)
    assert len(caplog.records) == 1 and "failing open" in caplog.records[0].getMessage()
    rendered = metrics.render().decode()
    assert metric_value(rendered, "inference_engine_rate_limit_unchecked_total", action="allowed") == 20
    assert metric_value(rendered, "inference_engine_rate_limit_store_up", backend="redis") == 0

    redis_server.start()  # the same port, empty
    await asyncio.sleep(0.35)  # past the retry interval
    assert [(await limiter.check("k")).allowed for _ in range(2)] == [True, False]  # limits again
    assert (
        metric_value(metrics.render().decode(), "inference_engine_rate_limit_store_up", backend="redis") == 1
    )
    await limiter.aclose()


async def test_fail_closed_refuses_with_retry_after(redis_server: RedisServer) -> None:
    config = settings(redis_server.url, fail_open=False, redis_retry_interval_s=2.0)
    limiter = RateLimiter(config, RedisBuckets(config))
    redis_server.stop()
    for _ in range(3):
        with pytest.raises(ServiceUnavailable) as refused:
            await limiter.check("k")
        assert refused.value.retry_after_s == 2
    await limiter.aclose()


async def test_a_silent_redis_costs_at_most_the_timeout() -> None:
    """A Redis that accepts connections and never answers (a hung node, a black-holed route)."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)

    silent = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    config = settings(f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.1, redis_retry_interval_s=5.0)
    limiter = RateLimiter(config, RedisBuckets(config))
    started = time.monotonic()
    assert not (await limiter.check("k")).known
    assert time.monotonic() - started < 0.5  # the timeout (0.1 s, twice at most), not a hang
    started = time.monotonic()
    assert not (await limiter.check("k")).known
    assert time.monotonic() - started < 0.01  # within the retry interval: Redis not asked
    await limiter.aclose()
    silent.close()


def test_the_redis_backend_needs_a_url() -> None:
    with pytest.raises(ValueError, match="redis_url"):
        RateLimitSettings(enabled=True, backend="redis")
