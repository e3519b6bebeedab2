"""Zero-shot labels and embeddings over HTTP, against a real server process."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.helpers import ServerProcess, cat_jpeg, encode, metric_value
from tests.repository import add_colour_text_model, add_tiny_cnn

RED = encode(np.full((32, 32, 3), (250, 10, 10), np.uint8), "PNG")
BLUE = encode(np.full((40, 40, 3), (10, 10, 250), np.uint8), "JPEG")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("tasks")
    add_colour_text_model(repo, "colours")
    add_tiny_cnn(repo)
    process = ServerProcess(repo, env={"IE_SERVER__MAX_ITEMS_PER_REQUEST": "3"})
    process.start(tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    process.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def labels_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [p["label"] for p in response.json()["predictions"]]


def test_zero_shot_labels_in_json_multipart_and_query(client: httpx.Client) -> None:
    image = base64.b64encode(BLUE).decode()
    assert labels_of(
        client.post("/v1/models/colours/predict", json={"image": image, "labels": ["red", "blue"]})
    ) == [
        "blue",
        "red",
    ]
    multipart = client.post(
        "/v1/models/colours/predict",
        files={"file": ("red.png", RED, "image/png")},
        data={"labels": ["green", "red"]},
    )
    assert labels_of(multipart) == ["red", "green"]
    comma = client.post(
        "/v1/models/colours/predict",
        files={"file": ("red.png", RED, "image/png")},
        data={"labels": "blue, red"},
    )
    assert labels_of(comma) == ["red", "blue"]
    query = client.post(
        "/v1/models/colours/predict?labels=green&labels=blue",
        content=BLUE,
        headers={"content-type": "image/jpeg"},
    )
    assert labels_of(query) == ["blue", "green"]
    scores = [p["score"] for p in query.json()["predictions"]]
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)


def test_default_labels_without_request_labels(client: httpx.Client) -> None:
    assert labels_of(client.post("/v1/models/colours/predict", content=RED))[0] == "red"


def test_embeddings_of_images_and_texts(client: httpx.Client) -> None:
    files = [("file", ("red.png", RED, "image/png")), ("file", ("blue.jpg", BLUE, "image/jpeg"))]
    images = client.post("/v1/models/colours/embed", files=files)
    assert images.status_code == 200, images.text
    body = images.json()
    assert body["modality"] == "image" and body["dimension"] == 3
    vectors = np.array(body["embeddings"])
    assert vectors.shape == (2, 3)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert list(vectors.argmax(axis=1)) == [0, 2]
    assert set(body["timings_ms"]) == {"preprocess", "queue", "inference", "total"}
    encoded = client.post("/v1/models/colours/embed", json={"images": [base64.b64encode(RED).decode()]})
    assert encoded.json()["embeddings"] == body["embeddings"][:1]
    raw = client.post("/v1/models/colours/embed", content=BLUE)
    assert np.allclose(raw.json()["embeddings"][0], vectors[1])
    texts = client.post("/v1/models/colours/embed", json={"texts": ["green", "red"]})
    assert texts.status_code == 200, texts.text
    assert texts.json()["modality"] == "text"
    assert list(np.array(texts.json()["embeddings"]).argmax(axis=1)) == [1, 0]


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "code", "message"),
    [
        ("/v1/models/tiny_cnn/embed", {"content": RED}, 400, "unsupported_task", "image embeddings"),
        (
            "/v1/models/tiny_cnn/predict",
            {"json": {"image": "AAAA", "labels": ["a"]}},
            400,
            "unsupported_task",
            "zero-shot",
        ),
        (
            "/v1/models/colours/embed",
            {"json": {"texts": ["a", "b", "c", "d"]}},
            422,
            "invalid_input",
            "limit is 3",
        ),
        ("/v1/models/colours/embed", {"json": {"texts": []}}, 400, "bad_request", "non-empty list"),
        ("/v1/models/colours/embed", {"json": {"texts": [1]}}, 400, "bad_request", "list of strings"),
        (
            "/v1/models/colours/embed",
            {"json": {"texts": ["a"], "images": ["AAAA"]}},
            400,
            "bad_request",
            "exactly one",
        ),
        ("/v1/models/colours/embed", {"json": {"vectors": []}}, 400, "bad_request", "unknown JSON field"),
        ("/v1/models/colours/embed", {"json": {"images": ["%%%"]}}, 400, "bad_request", "not valid base64"),
        ("/v1/models/colours/embed", {"json": {"texts": [""]}}, 422, "invalid_input", "non-empty string"),
        ("/v1/models/colours/embed", {"content": b"plain text"}, 415, "unsupported_media_type", "JPEG"),
        (
            "/v1/models/colours/predict",
            {"json": {"image": "AAAA", "labels": "red"}},
            400,
            "bad_request",
            "list of strings",
        ),
        (
            "/v1/models/colours/predict",
            {"json": {"image": "AAAA", "labels": ["a", "a"]}},
            422,
            "invalid_input",
            "repeat",
        ),
        ("/v1/models/nope/embed", {"content": RED}, 404, "model_not_found", "nope"),
    ],
)
def test_bad_task_requests_get_clear_errors(
    client: httpx.Client, path: str, kwargs: dict[str, object], status: int, code: str, message: str
) -> None:
    response = client.post(path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == code
    assert message in error["message"]
    assert client.post("/v1/models/colours/predict", content=RED).status_code == 200


def test_too_many_files_is_a_400(client: httpx.Client) -> None:
    files = [("file", (f"{i}.png", RED, "image/png")) for i in range(4)]
    response = client.post("/v1/models/colours/embed", files=files)
    assert response.status_code == 400
    assert "multipart" in response.json()["error"]["message"]


def test_metadata_names_tasks_and_cache_metrics_appear(client: httpx.Client) -> None:
    detail = client.get("/v1/models/colours").json()
    assert detail["metadata"]["tasks"] == ["classify", "embed_image", "embed_text", "zero_shot"]
    assert {o["name"] for o in detail["metadata"]["outputs"]} == {"probabilities", "embeddings"}
    for _ in range(2):
        client.post(
            "/v1/models/colours/predict", json={"image": base64.b64encode(RED).decode(), "labels": ["white"]}
        )
    metrics = client.get("/metrics").text
    assert (
        metric_value(metrics, "inference_engine_label_cache_lookups_total", model="colours", result="hit")
        >= 1
    )
    assert metric_value(metrics, "inference_engine_queue_depth", model="colours:text") == 0


def test_a_real_photo_through_the_zero_shot_path(client: httpx.Client) -> None:
    response = client.post("/v1/models/colours/predict?labels=white,blue", content=cat_jpeg())
    assert response.status_code == 200
    assert response.json()["request_id"]
