"""The request preamble: deadline, timed body, off-loop translation, error shape by route."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.types import Message

from inference_engine.access import hash_key
from inference_engine.api.payload import read_image_request
from inference_engine.api.request import InferenceCall
from inference_engine.errors import ClientDisconnected
from inference_engine.metrics import Metrics
from inference_engine.server import build_app
from inference_engine.settings import Settings
from inference_engine.transport import OFF_LOOP_BYTES, off_loop
from tests.helpers import in_process_client
from tests.repository import add_colour_model


def _thread_name() -> str:
    return threading.current_thread().name


async def test_small_work_stays_on_the_loop_and_large_work_leaves_it() -> None:
    here = threading.current_thread().name
    assert await off_loop(OFF_LOOP_BYTES - 1, _thread_name) == here
    assert await off_loop(OFF_LOOP_BYTES, _thread_name) != here


async def test_errors_raised_off_the_loop_reach_the_caller() -> None:
    def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await off_loop(OFF_LOOP_BYTES * 2, fails)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    add_colour_model(tmp_path, "colour")
    app = build_app(Settings(model_repository=tmp_path), Metrics())
    async with in_process_client(app) as c:
        yield c


async def test_the_error_shape_follows_the_route_not_the_url(client: httpx.AsyncClient) -> None:
    # A V2 route answers in V2's shape, whichever error it is (405 here, before any handler).
    wrong_method = await client.get("/v2/models/colour/infer")
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"error": "Method Not Allowed"}
    unknown = await client.post("/v2/models/nope/infer", content=b"{}")
    assert unknown.status_code == 404 and isinstance(unknown.json()["error"], str)
    # A native route keeps the native shape.
    native = await client.post("/v1/models/nope/predict", content=b"x")
    assert native.json()["error"]["type"] == "model_not_found"


async def test_an_unknown_model_is_404_before_the_timeout_header_is_read(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/models/nope/predict", content=b"x", headers={"X-Request-Timeout-Ms": "abc"}
    )
    assert response.status_code == 404
    response = await client.post(
        "/v1/models/colour/predict", content=b"x", headers={"X-Request-Timeout-Ms": "abc"}
    )
    assert response.status_code == 400


async def test_access_errors_on_v2_routes_take_the_v2_shape(tmp_path: Path) -> None:
    add_colour_model(tmp_path, "colour")
    settings = Settings(model_repository=tmp_path, auth={"enabled": True, "api_key_hashes": [hash_key("k")]})
    async with in_process_client(build_app(settings, Metrics())) as client:
        v2 = await client.post("/v2/models/colour/infer", content=b"{}")
        assert v2.status_code == 401 and isinstance(v2.json()["error"], str)
        native = await client.post("/v1/models/colour/predict", content=b"x")
        assert native.status_code == 401 and native.json()["error"]["type"] == "unauthorized"


def _hangs_up_mid_body(content_type: str, first: bytes) -> Request:
    """A request declaring 1 MB whose client sends ``first`` and disconnects."""
    messages: list[Message] = [
        {"type": "http.request", "body": first, "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> Message:
        return messages.pop(0)

    headers = [(b"content-type", content_type.encode()), (b"content-length", b"1000000")]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


async def test_a_disconnect_mid_body_is_the_clients_499_on_every_way_a_body_is_read() -> None:
    settings = Settings().server
    with pytest.raises(ClientDisconnected) as raw:
        await InferenceCall(_hangs_up_mid_body("application/json", b'{"inputs": ['), settings).body()
    assert raw.value.status_code == 499 and raw.value.code == "client_disconnected"
    with pytest.raises(ClientDisconnected):
        await read_image_request(_hangs_up_mid_body("image/png", b"\x89PNG"), settings.max_body_bytes)
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n\x89PNG'
    with pytest.raises(ClientDisconnected):
        await read_image_request(
            _hangs_up_mid_body("multipart/form-data; boundary=b", part), settings.max_body_bytes
        )
