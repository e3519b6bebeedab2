"""The ASGI app in-process (httpx.ASGITransport): routes, error mapping, middleware."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from inference_engine.metrics import Metrics
from inference_engine.server import build_app
from inference_engine.settings import Settings
from tests.helpers import encode, in_process_client, metric_value
from tests.repository import add_colour_model, add_model

GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")

POSTPROCESS_BUG = """
from inference_engine.models import ModelHandler

class Buggy(ModelHandler):
    def load(self, device): ...
    def preprocess(self, image): return 1
    def predict(self, items): return list(items)
    def postprocess(self, output, *, top_k): raise KeyError("secret internal detail")
"""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    add_colour_model(tmp_path, "colour")
    folder = add_model(tmp_path, "buggy", {"handler": "model.py", "max_batch_size": 1})
    (folder / "model.py").write_text(POSTPROCESS_BUG)
    settings = Settings(model_repository=tmp_path, server={"default_model": "colour"})
    metrics = Metrics()
    app = build_app(settings, metrics)
    async with in_process_client(app) as c:
        yield c


async def test_predict_in_process(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", files={"file": ("g.png", GREEN, "image/png")})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == "green"


async def test_an_unexpected_exception_is_a_500_without_internals(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/models/buggy/predict", content=GREEN, headers={"x-request-id": "r-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "r-1"
    assert response.json() == {
        "error": {
            "type": "internal_error",
            "message": "internal server error; see the server log",
            "request_id": "r-1",
        }
    }
    assert "secret" not in response.text
    text = (await client.get("/metrics")).text
    assert metric_value(text, "inference_engine_requests_total", model="buggy", status="500") == 1


async def test_an_unusable_request_id_is_replaced(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"x-request-id": "bad id with spaces\t"})
    assert response.headers["x-request-id"] != "bad id with spaces"
    assert len(response.headers["x-request-id"]) == 32


async def test_malformed_multipart_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/predict", content=b"--xyz\r\nbroken", headers={"content-type": "multipart/form-data"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "bad_request"


async def test_model_detail_of_unknown_and_failed_models(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/models/none")).status_code == 404
    detail = (await client.get("/v1/models/colour")).json()
    assert detail["metadata"]["labels_count"] == 3
    listing = (await client.get("/v1/models")).json()["models"]
    assert [m["name"] for m in listing] == ["buggy", "colour"]


async def test_ready_turns_503_while_shutting_down(tmp_path: Path) -> None:
    add_colour_model(tmp_path, "colour")
    app = build_app(Settings(model_repository=tmp_path), Metrics())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        async with app.router.lifespan_context(app):
            await app.state.service.wait_loaded()
            assert (await c.get("/ready")).status_code == 200
        response = await c.get("/ready")
        assert response.status_code == 503
        assert response.json()["status"] == "shutting_down"
        refused = await c.post("/predict", content=GREEN)
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "shutting_down"
        assert "retry-after" in refused.headers


async def test_no_models_is_not_ready(tmp_path: Path) -> None:
    app = build_app(Settings(model_repository=tmp_path), Metrics())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as c,
    ):
        assert (await c.get("/ready")).status_code == 503
        response = await c.post("/predict", content=GREEN)
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "model_not_found"


async def test_unknown_model_names_do_not_become_metric_labels(client: httpx.AsyncClient) -> None:
    for name in ("a1", "b2", "c3"):
        assert (await client.post(f"/v1/models/{name}/predict", content=GREEN)).status_code == 404
    text = (await client.get("/metrics")).text
    assert 'model="a1"' not in text
    assert metric_value(text, "inference_engine_requests_total", model="", status="404") == 3


async def test_json_bodies_carry_base64_or_data_uris(client: httpx.AsyncClient) -> None:
    encoded = base64.b64encode(GREEN).decode()
    for image in (encoded, f"data:image/png;base64,{encoded}"):
        response = await client.post("/predict", json={"image": image})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == "green"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"image": "not base64!!"}', "not valid base64"),
        (b'{"image": 5}', "must be base64 text"),
        (b'{"url": "http://example.com/cat.jpg"}', "does not fetch image URLs"),
        (b'{"url": 7}', "'url' must be a string"),
        (b'{"image": "", "url": ""}', "exactly one"),
        (b"{}", "exactly one"),
        (b'{"picture": "x"}', "unknown JSON field"),
        (b"[1, 2]", "must be an object"),
        (b"{not json", "not valid JSON"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"image": "data:image/png,abc"}', "base64 encoded"),
    ],
)
async def test_bad_json_bodies_are_400(client: httpx.AsyncClient, body: bytes, message: str) -> None:
    response = await client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "bad_request"
    assert message in response.json()["error"]["message"]
    assert len(response.json()["error"]["message"]) < 200


@pytest.mark.parametrize("value", ["abc", "-5", "0", "1.5"])
async def test_a_bad_timeout_header_is_400(client: httpx.AsyncClient, value: str) -> None:
    response = await client.post("/predict", content=GREEN, headers={"x-request-timeout-ms": value})
    assert response.status_code == 400
    assert "X-Request-Timeout-Ms" in response.json()["error"]["message"]


async def test_a_long_model_name_is_not_echoed_whole(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/v1/models/{'x' * 5000}/predict", content=GREEN)
    assert response.status_code == 404
    assert len(response.json()["error"]["message"]) < 200
