"""Per-input failures, batch failures and load failures stay contained; readiness is honest."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.helpers import ServerProcess, cat_jpeg, encode, metric_value

pytestmark = pytest.mark.integration


def solid(colour: tuple[int, int, int]) -> bytes:
    return encode(np.full((32, 32, 3), colour, np.uint8), "PNG")


RED, GREEN, BLUE = solid((250, 10, 10)), solid((10, 250, 10)), solid((10, 10, 250))


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


async def _post_together(url: str, path: str, payloads: list[bytes]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(*(client.post(path, content=p) for p in payloads))


def test_an_input_the_model_fails_on_fails_alone(server: ServerProcess) -> None:
    payloads = [GREEN, RED, GREEN, RED, GREEN, GREEN]
    responses = asyncio.run(_post_together(server.url, "/v1/models/flaky/predict", payloads))
    for payload, response in zip(payloads, responses, strict=True):
        if payload is RED:
            assert response.status_code == 500
            error = response.json()["error"]
            assert error["type"] == "model_failed"
            assert "ValueError" in error["message"]
            assert "Traceback" not in response.text
        else:
            assert response.status_code == 200, response.text
            assert response.json()["predictions"][0]["label"] == "green"


def test_a_batch_wide_failure_fails_only_that_batch_and_the_loop_survives(
    server: ServerProcess, client: httpx.Client
) -> None:
    response = client.post("/v1/models/flaky/predict", content=BLUE)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "model_failed"
    assert client.post("/v1/models/flaky/predict", content=GREEN).status_code == 200
    assert client.get("/ready").json()["models"].get("flaky") is None
    failures = metric_value(
        client.get("/metrics").text, "inference_engine_batch_failures_total", model="flaky"
    )
    assert failures >= 1


def test_model_that_fails_to_load_is_not_ready_and_named(client: httpx.Client) -> None:
    response = client.get("/ready")
    assert response.status_code == 503
    models = response.json()["models"]
    assert set(models) == {"broken", "misconfigured"}
    assert "missing.pt" in models["broken"]
    assert "no_such_handler" in models["misconfigured"]
    error = client.post("/v1/models/broken/predict", content=cat_jpeg()).json()["error"]
    assert error["type"] == "model_not_ready"
    text = client.get("/metrics").text
    assert metric_value(text, "inference_engine_model_load_failures_total", model="broken") == 1
    assert metric_value(text, "inference_engine_model_ready", model="broken") == 0
    assert metric_value(text, "inference_engine_model_ready", model="efficientnet_lite0") == 1


def test_the_other_models_keep_serving(client: httpx.Client) -> None:
    assert client.post("/v1/models/efficientnet_lite0/predict", content=cat_jpeg()).status_code == 200
    assert client.post("/v1/models/flaky/predict", content=GREEN).status_code == 200


def test_info_and_model_listing(client: httpx.Client) -> None:
    info = client.get("/info").json()
    assert info["name"] == "inference-engine"
    assert info["default_model"] == "efficientnet_lite0"
    by_name = {m["name"]: m for m in info["models"]}
    default = by_name["efficientnet_lite0"]
    assert default["handler"] == "efficientnet_lite"
    assert default["labels_count"] == 1000
    assert default["batching"]["max_batch_size"] == 8
    assert default["load_seconds"] > 0
    assert by_name["broken"]["state"] == "failed"
    assert "api_key" not in json.dumps(info["config"]).lower()
    detail = client.get("/v1/models/efficientnet_lite0").json()
    assert detail["metadata"]["input_size"] == [3, 224, 224]


def test_openapi_documents_the_routes(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/v1/models/{name}/predict", "/health", "/ready", "/metrics", "/info"} <= set(
        spec["paths"]
    )
    body = spec["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body
    assert client.get("/docs").status_code == 200


def test_every_request_has_one_log_line_and_every_batch_lists_its_requests(
    server: ServerProcess, client: httpx.Client
) -> None:
    response = client.post("/predict", content=cat_jpeg(), headers={"x-request-id": "log-check-1"})
    assert response.status_code == 200
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    access = [
        r for r in lines if r["logger"] == "inference_engine.access" and r["request_id"] == "log-check-1"
    ]
    assert len(access) == 1
    assert access[0]["status"] == 200
    assert access[0]["model"] == "efficientnet_lite0"
    assert access[0]["batch_size"] >= 1
    assert access[0]["duration_ms"] > 0
    batches = [r for r in lines if r["message"] == "batch done" and "log-check-1" in r["request_ids"]]
    assert len(batches) == 1
    assert {"batch_id", "batch_size", "queue_wait_ms", "inference_ms"} <= set(batches[0])
