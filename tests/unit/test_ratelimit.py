"""Token buckets: burst, refill, overrides, bounded memory."""

from __future__ import annotations

from inference_engine.ratelimit import InMemoryBuckets, RateLimiter
from inference_engine.settings import RateLimitSettings


async def test_burst_then_refill_at_the_rate() -> None:
    limiter = RateLimiter(RateLimitSettings(enabled=True, rate=2, burst=3))
    decisions = [(await limiter.check("a", now=100.0)) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[3].retry_after_s == 0.5
    assert decisions[3].headers() == {
        "X-RateLimit-Limit": "3",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "2",
    }
    assert (await limiter.check("a", now=100.49)).allowed is False
    assert (await limiter.check("a", now=100.51)).allowed is True
    assert (await limiter.check("b", now=100.51)).remaining == 2  # clients have separate buckets


async def test_a_bucket_never_holds_more_than_its_burst() -> None:
    limiter = RateLimiter(RateLimitSettings(enabled=True, rate=10, burst=2))
    await limiter.check("a", now=0.0)
    assert (await limiter.check("a", now=1000.0)).remaining == 1


async def test_overrides_apply_per_key() -> None:
    settings = RateLimitSettings(enabled=True, rate=1, burst=1, overrides={"vip": {"rate": 50, "burst": 5}})
    limiter = RateLimiter(settings)
    assert [(await limiter.check("vip", now=0.0)).allowed for _ in range(5)] == [True] * 5
    assert (await limiter.check("vip", now=0.0)).limit == 5
    assert [(await limiter.check("other", now=0.0)).allowed for _ in range(2)] == [True, False]


async def test_memory_is_bounded_by_max_clients() -> None:
    store = InMemoryBuckets(max_clients=100)
    limiter = RateLimiter(RateLimitSettings(enabled=True), store)
    for i in range(1000):
        await limiter.check(f"client-{i}", now=float(i))
    assert len(store) == 100
