"""Under load: every accepted request is answered, batches form, overload is shed fast.

Uses its own server with deliberately slow models, so queues fill and deadlines pass without
depending on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import ServerProcess, cat_jpeg, encode, metric_value
from tests.repository import add_colour_model

pytestmark = pytest.mark.integration

GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")


async def _post_many(url: str, path: str, payload: bytes, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post(path, content=payload) for _ in range(count)))


def test_100_concurrent_requests_are_all_answered_in_batches(server: ServerProcess) -> None:
    before = httpx.get(f"{server.url}/metrics").text
    responses = asyncio.run(_post_many(server.url, "/predict", cat_jpeg(), 100))
    assert [r.status_code for r in responses] == [200] * 100
    assert len({r.json()["request_id"] for r in responses}) == 100
    after = httpx.get(f"{server.url}/metrics").text

    def delta(name: str) -> float:
        labels = {"model": "efficientnet_lite0"}
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    inputs, batches = delta("inference_engine_batch_size_sum"), delta("inference_engine_batch_size_count")
    assert inputs == 100
    assert batches < 100, "no batch larger than 1 formed"
    assert inputs / batches > 1.5


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo: Path = tmp_path_factory.mktemp("slow-repository")
    # The queue's own refusals and drops, without predictive admission (which would refuse most of
    # these requests at once for their deadline: tests/integration/test_admission.py).
    only_queue = {"admission": "queue_only"}
    add_colour_model(
        repo,
        "slow_small_queue",
        delay_s=0.3,
        settings={"max_batch_size": 2, "max_queue_size": 4, **only_queue},
    )
    add_colour_model(
        repo, "slow", delay_s=0.3, settings={"max_batch_size": 2, "max_queue_size": 200, **only_queue}
    )
    process = ServerProcess(repo, env={"IE_SERVER__REQUEST_TIMEOUT_S": "1.0"})
    process.start(tmp_path_factory.mktemp("slow-logs") / "server.log")
    yield process
    process.stop()


def test_a_full_queue_answers_503_at_once_with_retry_after(slow_server: ServerProcess) -> None:
    started = time.monotonic()
    responses = asyncio.run(_post_many(slow_server.url, "/v1/models/slow_small_queue/predict", GREEN, 30))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503, 504}, statuses
    shed = [r for r in responses if r.status_code == 503]
    assert shed, "nothing was shed although 30 requests met a queue of 4"
    for response in shed:
        assert response.json()["error"]["type"] == "queue_full"
        assert int(response.headers["retry-after"]) >= 1
    assert statuses.count(200) >= 2
    assert time.monotonic() - started < 10


def test_requests_past_their_deadline_get_504_and_cost_no_forward_pass(slow_server: ServerProcess) -> None:
    before = httpx.get(f"{slow_server.url}/metrics").text
    responses = asyncio.run(_post_many(slow_server.url, "/v1/models/slow/predict", GREEN, 24))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 504}, statuses
    for response in responses:
        if response.status_code == 504:
            assert response.json()["error"]["type"] == "deadline_exceeded"
    # Let the batcher reach the expired items, then count what ran.
    time.sleep(1.0)
    after = httpx.get(f"{slow_server.url}/metrics").text
    ran = metric_value(after, "inference_engine_batch_size_sum", model="slow") - metric_value(
        before, "inference_engine_batch_size_sum", model="slow"
    )
    dropped = metric_value(after, "inference_engine_dropped_inputs_total", model="slow", reason="deadline")
    assert ran < len(responses)
    assert dropped >= statuses.count(504) - 2  # at most the batch in flight at the deadline ran late
    assert httpx.get(f"{slow_server.url}/ready").status_code == 200


def test_a_client_that_disconnects_costs_no_forward_pass(slow_server: ServerProcess) -> None:
    before = httpx.get(f"{slow_server.url}/metrics").text
    body = GREEN
    head = (
        f"POST /v1/models/slow/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with httpx.Client(base_url=slow_server.url, timeout=30) as client:
        sockets = []
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", slow_server.port))
            sock.sendall(head + body)
            sockets.append(sock)
        time.sleep(0.1)
        for sock in sockets:
            sock.close()
        time.sleep(2.0)
        after = client.get("/metrics").text
        assert client.post("/v1/models/slow/predict", content=GREEN).status_code == 200
    ran = metric_value(after, "inference_engine_batch_size_sum", model="slow") - metric_value(
        before, "inference_engine_batch_size_sum", model="slow"
    )
    cancelled = metric_value(after, "inference_engine_dropped_inputs_total", model="slow", reason="cancelled")
    assert cancelled >= 4
    assert ran <= 8 - cancelled
    statuses = metric_value(after, "inference_engine_requests_total", model="slow", status="499")
    assert statuses >= 4
