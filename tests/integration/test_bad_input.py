"""Every kind of bad input gets a clear 4xx JSON error, and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers import ServerProcess, cat_jpeg, encode

pytestmark = pytest.mark.integration


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def assert_error(response: httpx.Response, status: int, error_type: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == error_type
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    assert "Traceback" not in response.text
    return error


def test_text_file_is_415_even_when_it_claims_to_be_a_jpeg(client: httpx.Client) -> None:
    response = client.post("/predict", files={"file": ("cat.jpg", b"just some text, honestly", "image/jpeg")})
    assert_error(response, 415, "unsupported_media_type")


def test_truncated_jpeg_is_422(client: httpx.Client) -> None:
    payload = cat_jpeg()
    assert_error(client.post("/predict", content=payload[: len(payload) // 3]), 422, "invalid_input")


def test_corrupt_png_is_422(client: httpx.Client) -> None:
    payload = bytearray(encode(np.zeros((64, 64, 3), np.uint8), "PNG"))
    payload[40:80] = b"\x00" * 40
    assert_error(client.post("/predict", content=bytes(payload)), 422, "invalid_input")


def test_empty_body_is_422(client: httpx.Client) -> None:
    assert_error(client.post("/predict", content=b""), 422, "invalid_input")


def test_body_over_the_cap_is_413(client: httpx.Client) -> None:
    # configs/test.yaml caps bodies at 5,000,000 bytes.
    assert_error(
        client.post("/predict", content=b"\xff\xd8\xff" + b"0" * 5_000_000), 413, "payload_too_large"
    )


def test_body_over_the_cap_without_content_length_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(60):
            yield b"\xff" * 100_000

    assert_error(client.post("/predict", content=chunks()), 413, "payload_too_large")


def test_too_many_pixels_is_refused_before_decoding(client: httpx.Client) -> None:
    # 6000x6000 = 36M pixels > the test cap of 30M; a flat PNG of that size compresses to ~100 KB.
    payload = encode(Image.new("L", (6000, 6000)), "PNG", optimize=False)
    assert len(payload) < 5_000_000
    error = assert_error(client.post("/predict", content=payload), 422, "image_too_large")
    assert "36000000" in error["message"]


def test_tiny_image_is_422(client: httpx.Client) -> None:
    payload = encode(Image.new("RGB", (4, 4)), "PNG")
    assert_error(client.post("/predict", content=payload), 422, "image_too_small")


def test_multipart_without_a_file_field_is_400(client: httpx.Client) -> None:
    response = client.post("/predict", files={"image": ("cat.jpg", cat_jpeg())})
    error = assert_error(response, 400, "bad_request")
    assert "'file'" in error["message"]


def test_unknown_model_is_404(client: httpx.Client) -> None:
    error = assert_error(client.post("/v1/models/nope/predict", content=cat_jpeg()), 404, "model_not_found")
    assert "efficientnet_lite0" in error["message"]


@pytest.mark.parametrize("top_k", ["0", "-1", "abc", "100000"])
def test_bad_top_k_is_422(client: httpx.Client, top_k: str) -> None:
    response = client.post("/predict", content=cat_jpeg(), params={"top_k": top_k})
    error = assert_error(response, 422, "invalid_input")
    assert "top_k" in error["message"]


def test_unknown_route_and_wrong_method_use_the_same_error_shape(client: httpx.Client) -> None:
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/predict"), 405, "method_not_allowed")


def test_server_still_serves_after_all_of_that(client: httpx.Client) -> None:
    for payload in (b"garbage", cat_jpeg()[:500], b""):
        assert client.post("/predict", content=payload).status_code in (415, 422)
    assert client.post("/predict", content=cat_jpeg()).status_code == 200
    assert client.get("/health").json() == {"status": "ok"}
