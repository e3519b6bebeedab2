"""A model whose forward pass hangs turns not-ready within the bound, fails fast, and recovers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.helpers import ServerProcess, encode, metric_value
from tests.repository import add_colour_model

pytestmark = pytest.mark.integration

GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")
BLUE = encode(np.full((32, 32, 3), (10, 10, 250), np.uint8), "PNG")


@pytest.fixture(scope="module")
def hanging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("hang-repo")
    add_colour_model(repo, "hangs", hang_on_blue_s=8, load_delay_s=1.0, settings={"max_batch_size": 1})
    add_colour_model(repo, "healthy")
    env = {"IE_WATCHDOG__MAX_FORWARD_S": "1.0", "IE_WATCHDOG__CHECK_INTERVAL_S": "0.2"}
    server = ServerProcess(repo, env=env)
    server.start(tmp_path_factory.mktemp("hang-logs") / "server.log")
    yield server
    server.stop()


def test_a_hung_forward_pass_is_detected_fails_fast_and_the_model_recovers(hanging: ServerProcess) -> None:
    async def scenario() -> tuple[list[httpx.Response], float, float]:
        async with httpx.AsyncClient(base_url=hanging.url, timeout=30) as client:
            started = time.monotonic()
            hung = asyncio.create_task(client.post("/v1/models/hangs/predict", content=BLUE))
            await asyncio.sleep(0.3)
            queued = [
                asyncio.create_task(client.post("/v1/models/hangs/predict", content=GREEN)) for _ in range(3)
            ]
            not_ready_at = recovered_at = 0.0
            while time.monotonic() - started < 15:
                ready = await client.get("/ready")
                if not not_ready_at and ready.status_code == 503:
                    assert "hangs" in ready.json()["models"]
                    assert "healthy" not in ready.json()["models"]
                    not_ready_at = time.monotonic() - started
                if not_ready_at and ready.status_code == 200:
                    recovered_at = time.monotonic() - started
                    break
                await asyncio.sleep(0.05)
            return [await hung, *[await q for q in queued]], not_ready_at, recovered_at

    responses, not_ready_at, recovered_at = asyncio.run(scenario())
    assert 0 < not_ready_at < 1.0 + 0.2 + 1.0  # the bound, one check interval, and slack
    assert recovered_at > not_ready_at
    assert recovered_at < 8  # recovered long before the hung pass itself returns
    for response in responses:
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "model_not_ready"
        assert "restarting" in response.json()["error"]["message"]
    with httpx.Client(base_url=hanging.url) as client:
        assert client.post("/v1/models/hangs/predict", content=GREEN).status_code == 200
        assert client.post("/v1/models/healthy/predict", content=GREEN).status_code == 200
        text = client.get("/metrics").text
    assert metric_value(text, "inference_engine_watchdog_restarts_total", model="hangs", reason="hung") == 1
    assert metric_value(text, "inference_engine_model_ready", model="hangs") == 1
