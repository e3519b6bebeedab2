"""Real predictions from the real server, over HTTP, with real photos."""

from __future__ import annotations

import httpx
import pytest
from skimage import data

from tests.helpers import ServerProcess, cat_jpeg, coffee_png, encode

pytestmark = pytest.mark.integration

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}


@pytest.fixture
def client(server: ServerProcess) -> httpx.Client:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def test_cat_photo_has_a_cat_in_its_top_3(client: httpx.Client) -> None:
    response = client.post("/v1/models/efficientnet_lite0/predict", files={"file": ("cat.jpg", cat_jpeg())})
    assert response.status_code == 200, response.text
    body = response.json()
    top3 = [p["label"] for p in body["predictions"][:3]]
    assert CAT_CLASSES & set(top3), top3
    assert body["model"] == "efficientnet_lite0"
    assert body["model_version"] == "1"
    assert body["request_id"] == response.headers["x-request-id"]
    assert set(body["timings_ms"]) >= {"queue", "inference", "total"}
    assert body["timings_ms"]["total"] >= body["timings_ms"]["inference"] > 0


def test_coffee_photo_is_top_1_espresso_as_raw_body(client: httpx.Client) -> None:
    response = client.post(
        "/predict", content=coffee_png(), headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 200, response.text
    top = response.json()["predictions"][0]
    assert top["label"] == "espresso"
    assert top["index"] == 967
    assert top["score"] > 0.8


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_accepted_format_is_served(client: httpx.Client, fmt: str) -> None:
    payload = encode(data.coffee(), fmt)
    response = client.post("/predict", content=payload, params={"top_k": 2})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2


def test_top_k_defaults_to_model_setting_and_scores_are_sorted(client: httpx.Client) -> None:
    predictions = client.post("/predict", content=cat_jpeg()).json()["predictions"]
    assert len(predictions) == 5
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)


def test_request_id_is_echoed(client: httpx.Client) -> None:
    response = client.post("/predict", content=cat_jpeg(), headers={"x-request-id": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    assert response.json()["request_id"] == "trace-42"


def test_torchscript_model_serves_its_own_labels(client: httpx.Client) -> None:
    response = client.post("/v1/models/tiny_cnn/predict", content=cat_jpeg(), params={"top_k": 10})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert {p["label"] for p in predictions} == {"alpha", "beta", "gamma", "delta"}
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)
