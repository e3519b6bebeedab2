"""Two server processes sharing one real ``redis-server`` enforce one rate limit per key, fail open
or closed (as configured) while Redis is down without a request hanging, and limit again once
it is back.

Server A fails open, server B fails closed: one Redis outage shows both modes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import RedisServer, ServerProcess, encode, metric_value
from tests.repository import add_colour_model

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]

KEY = "shared-limit-key-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
RATE, BURST = 5.0, 5
RETRY_INTERVAL_S = 0.5
PHOTO = encode(np.full((32, 32, 3), (200, 30, 30), np.uint8), "PNG")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[list[ServerProcess]]:
    repo = tmp_path_factory.mktemp("redis-repo")
    add_colour_model(repo, "colour")
    env = {
        "IE_AUTH__ENABLED": "true",
        "IE_AUTH__API_KEY_HASHES": json.dumps([hashlib.sha256(KEY.encode()).hexdigest()]),
        "IE_RATE_LIMIT__ENABLED": "true",
        "IE_RATE_LIMIT__BACKEND": "redis",
        "IE_RATE_LIMIT__REDIS_URL": redis_server.url,
        "IE_RATE_LIMIT__RATE": str(RATE),
        "IE_RATE_LIMIT__BURST": str(BURST),
        "IE_RATE_LIMIT__REDIS_RETRY_INTERVAL_S": str(RETRY_INTERVAL_S),
    }
    logs = tmp_path_factory.mktemp("redis-logs")
    servers = [
        ServerProcess(repo, env={**env, "IE_RATE_LIMIT__FAIL_OPEN": str(fail_open).lower()}, headers=AUTH)
        for fail_open in (True, False)
    ]
    for index, server in enumerate(servers):
        server.start(Path(logs) / f"server-{index}.log")
    yield servers
    for server in servers:
        server.stop()


def post(server: ServerProcess) -> tuple[int, float, httpx.Headers]:
    started = time.monotonic()
    response = httpx.post(f"{server.url}/predict", content=PHOTO, headers=AUTH, timeout=10)
    return response.status_code, time.monotonic() - started, response.headers


def wait_for_refill() -> None:
    time.sleep(BURST / RATE + 0.2)


def test_two_replicas_enforce_one_limit_per_key(replicas: list[ServerProcess]) -> None:
    wait_for_refill()
    started = time.monotonic()
    statuses: list[tuple[int, int]] = []  # (replica, status)

    def client(index: int) -> None:
        server = replicas[index % 2]
        while time.monotonic() - started < 3.0:
            statuses.append((index % 2, post(server)[0]))
            time.sleep(0.01)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(client, range(4)))
    elapsed = time.monotonic() - started
    ok = [replica for replica, status in statuses if status == 200]
    limited = sum(status == 429 for _, status in statuses)
    print(f"\nshared limit: {len(statuses)} requests in {elapsed:.2f} s over 2 replicas, {len(ok)} x 200 "
          f"(A {ok.count(0)}, B {ok.count(1)}), {limited} x 429; allowed at most "
          f"{RATE * elapsed + BURST:.1f} (rate x time + burst)")  # fmt: skip
    assert {status for _, status in statuses} <= {200, 429}
    assert len(ok) <= RATE * elapsed + BURST  # per-process buckets would allow twice this
    assert len(ok) >= RATE * 3.0 * 0.8  # and the limit is not stricter than configured
    assert ok.count(0) and ok.count(1)  # both replicas served
    assert limited > len(ok)


def test_redis_down_fails_open_or_closed_then_limits_again(
    replicas: list[ServerProcess], redis_server: RedisServer
) -> None:
    fail_open, fail_closed = replicas
    redis_server.stop()
    try:
        opened = [post(fail_open) for _ in range(3 * BURST)]
        closed = [post(fail_closed) for _ in range(5)]
    finally:
        redis_server.start()  # the same port, empty
    print(f"\nRedis down: fail-open replica {[s for s, _, _ in opened]}, "
          f"slowest {max(t for _, t, _ in opened) * 1000:.0f} ms; fail-closed replica "
          f"{[s for s, _, _ in closed]}, slowest {max(t for _, t, _ in closed) * 1000:.0f} ms")  # fmt: skip
    assert [status for status, _, _ in opened] == [200] * (3 * BURST)  # past the burst: unlimited
    assert all("x-ratelimit-limit" not in headers for _, _, headers in opened)
    assert [status for status, _, _ in closed] == [503] * 5
    assert all(int(headers["retry-after"]) >= 1 for _, _, headers in closed)
    assert max(elapsed for _, elapsed, _ in opened + closed) < 1.0  # nothing waits on Redis
    metrics = httpx.get(f"{fail_open.url}/metrics", headers=AUTH).text
    assert metric_value(metrics, "inference_engine_rate_limit_unchecked_total", action="allowed") >= 3 * BURST
    assert fail_open.log().count("rate-limit store unreachable") == 1  # logged once, not per request

    time.sleep(RETRY_INTERVAL_S + 0.1)
    # Limits apply again, shared: a fresh Redis gives the key one burst over both replicas, then 429.
    statuses = [post(replicas[i % 2])[0] for i in range(BURST + 3)]
    print(f"Redis back, requests alternating between the replicas: {statuses}")
    assert statuses[:BURST] == [200] * BURST and 429 in statuses[BURST:], statuses
    metrics = httpx.get(f"{fail_open.url}/metrics", headers=AUTH).text
    assert metric_value(metrics, "inference_engine_rate_limit_store_up", backend="redis") == 1
    assert "rate-limit store answers again" in fail_open.log()
