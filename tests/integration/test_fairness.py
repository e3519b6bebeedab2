"""Fair queuing on a real server: one tenant's flood delays another by at most its share.

``slowish`` (the colour model, 100 ms per forward pass whatever its size, batches of at most 4:
40 inputs/s) serves two tenants with equal weights. The light tenant keeps 2 requests in flight;
the heavy tenant 20 (ten times the light tenant's load, which saturates the model). First come,
first served, every light request would wait behind about 20 heavy ones, five passes; filled by
deficit round-robin, it rides in the next batch. The bound checked: the light tenant's p99 under
the flood stays within two and a half forward passes of its p99 alone (the pass running when it
arrives, the one it rides in, and slack for a loaded machine), where first come, first served
would add five.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from inference_engine.access import hash_key
from tests.helpers import ServerProcess, encode

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PASS_S = 0.1
PATH = "/v1/models/slowish/predict"
GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")
HEAVY_KEY, LIGHT_KEY = "heavy-tenant-key", "light-tenant-key"
RUN_S = 4.0
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from tests.repository import add_colour_model

    repo = tmp_path_factory.mktemp("fairness-repository")
    add_colour_model(repo, "slowish", delay_s=PASS_S, settings={"max_batch_size": 4, "max_queue_size": 64})
    tenants = {
        "heavy": {"key_hashes": [hash_key(HEAVY_KEY)], "weight": 1},
        "light": {"key_hashes": [hash_key(LIGHT_KEY)], "weight": 1, "max_priority": "high"},
    }
    env = {"IE_AUTH__ENABLED": "true", "IE_FAIRNESS__TENANTS": json.dumps(tenants)}
    process = ServerProcess(repo, env=env, headers={"x-api-key": LIGHT_KEY})
    process.start(tmp_path_factory.mktemp("fairness-logs") / "server.log")
    yield process
    process.stop()


async def clients(server: ServerProcess, key: str, count: int, until: float) -> list[float]:
    """``count`` closed-loop clients of one tenant until ``until``; each answer's latency."""
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient) -> None:
        while time.monotonic() < until:
            started = time.monotonic()
            answer = await client.post(PATH, content=GREEN, headers={"content-type": "image/png"})
            assert answer.status_code == 200, answer.text
            latencies.append(time.monotonic() - started)

    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(
        base_url=server.url, timeout=30, headers={"x-api-key": key}, limits=limits
    ) as client:
        await asyncio.gather(*(one(client) for _ in range(count)))
    return latencies


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99))


async def test_a_flood_delays_the_light_tenant_by_at_most_its_share(server: ServerProcess) -> None:
    alone = await clients(server, LIGHT_KEY, 2, time.monotonic() + RUN_S)
    until = time.monotonic() + RUN_S
    heavy, flooded = await asyncio.gather(
        clients(server, HEAVY_KEY, 20, until + 0.5),
        clients(server, LIGHT_KEY, 2, until),
    )
    assert len(heavy) > 5 * len(flooded) / 2  # the heavy tenant did send its flood
    bound = p99(alone) + 2.5 * PASS_S
    assert p99(flooded) <= bound, (
        f"light tenant p99 {p99(flooded) * 1000:.0f} ms under the flood vs {p99(alone) * 1000:.0f} ms alone"
    )
    # For scale: the heavy tenant's own requests wait behind each other, about five passes.
    assert float(np.median(heavy)) > float(np.median(flooded))


async def test_priority_goes_first_within_the_ceiling(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30, headers={"x-api-key": LIGHT_KEY}) as client:
        asked = await client.post(
            PATH, content=GREEN, headers={"content-type": "image/png", "x-priority": "high"}
        )
        bad = await client.post(
            PATH, content=GREEN, headers={"content-type": "image/png", "x-priority": "asap"}
        )
    assert asked.status_code == 200
    # The access line names the tenant and the priority it ran at (tenants are not metric labels).
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    served = [line for line in lines if line.get("request_id") == asked.headers["x-request-id"]]
    access = [line for line in served if line.get("message") == "request"]
    assert access and access[0]["tenant"] == "light" and access[0]["priority"] == "high", served
    assert bad.status_code == 400 and "X-Priority" in bad.json()["error"]["message"]
