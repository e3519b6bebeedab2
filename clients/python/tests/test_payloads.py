"""What the client sends (images in every accepted form) and how it reads the answers."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest

from inference_engine_client import Embeddings, InvalidResponse, ModelInfo, Prediction, Readiness
from inference_engine_client._core import default_headers, embed_request, encode_image, make_breaker
from inference_engine_client.breaker import CircuitBreaker

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_an_image_can_be_bytes_a_path_or_a_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    path.write_bytes(b"\xff\xd8data")

    assert encode_image(b"\xff\xd8data") == b"\xff\xd8data"
    assert encode_image(bytearray(b"ab")) == b"ab"
    assert encode_image(memoryview(b"ab")) == b"ab"
    assert encode_image(path) == b"\xff\xd8data"
    assert encode_image(str(path)) == b"\xff\xd8data"
    with path.open("rb") as handle:
        assert encode_image(handle) == b"\xff\xd8data"


def test_a_pil_image_is_sent_as_lossless_png() -> None:
    image = pytest.importorskip("PIL.Image", reason="Pillow is optional for the client")
    encoded = encode_image(image.new("RGBA", (9, 9), (1, 2, 3, 4)))
    assert encoded.startswith(PNG_MAGIC)
    assert image.open(io.BytesIO(encoded)).getpixel((0, 0)) == (1, 2, 3, 4)  # lossless


def test_a_text_mode_file_or_another_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("hello")

    with path.open() as handle, pytest.raises(TypeError, match="binary mode"):
        encode_image(handle)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot send int"):
        encode_image(42)  # type: ignore[arg-type]


def test_embed_requests_carry_base64_images_or_texts() -> None:
    images = embed_request("clip", images=[b"ab", b"cd"])
    texts = embed_request("clip", texts=["a cat", "a dog"])

    assert images.path == "/v1/models/clip/embed"
    assert json.loads(images.content or b"") == {"images": [base64.b64encode(b"ab").decode(), "Y2Q="]}
    assert json.loads(texts.content or b"") == {"texts": ["a cat", "a dog"]}
    assert images.deadline and texts.deadline


def test_an_api_key_is_sent_as_a_bearer_token() -> None:
    assert default_headers("k3y", None)["Authorization"] == "Bearer k3y"
    assert "Authorization" not in default_headers(None, {"X-Extra": "1"})
    assert default_headers(None, {"X-Extra": "1"})["X-Extra"] == "1"


def test_breaker_argument() -> None:
    mine = CircuitBreaker(failure_threshold=2)

    assert isinstance(make_breaker(True), CircuitBreaker)
    assert make_breaker(False) is None
    assert make_breaker(mine) is mine


PREDICTION: dict[str, Any] = {
    "model": "efficientnet_lite0",
    "model_version": "1",
    "request_id": "r1",
    "predictions": [
        {"label": "tiger cat", "index": 282, "score": 0.39},
        {"label": "a dog", "score": 0.1},  # a zero-shot answer has no index
        "ignored",
    ],
    "timings_ms": {"preprocess": 1.5, "total": 3, "note": "ignored"},
}


def test_a_prediction_is_typed_and_keeps_the_raw_body() -> None:
    prediction = Prediction.from_json(PREDICTION)

    assert prediction.labels == ["tiger cat", "a dog"]
    assert prediction.scores == [0.39, 0.1]
    assert prediction.top1 is not None
    assert (prediction.top1.label, prediction.top1.index) == ("tiger cat", 282)
    assert prediction.predictions[1].index is None
    assert prediction.timings_ms == {"preprocess": 1.5, "total": 3.0}
    assert prediction.raw is PREDICTION


def test_a_custom_handler_answer_without_predictions_has_no_top1() -> None:
    prediction = Prediction.from_json({"model": "m", "model_version": 2, "boxes": []})

    assert prediction.top1 is None
    assert prediction.model_version == "2"
    assert prediction.timings_ms == {}


@pytest.mark.parametrize("body", [[], {"predictions": []}, {"model": 3}])
def test_a_body_without_a_model_is_an_invalid_response(body: Any) -> None:
    with pytest.raises(InvalidResponse, match="'model'"):
        Prediction.from_json(body)


def test_embeddings() -> None:
    body = {
        "model": "clip",
        "model_version": "1",
        "request_id": "r",
        "modality": "text",
        "dimension": 2,
        "embeddings": [[0.6, 0.8], [1, 0]],
        "timings_ms": {"total": 2.0},
    }

    embeddings = Embeddings.from_json(body)

    assert embeddings.embeddings == [[0.6, 0.8], [1.0, 0.0]]
    assert (embeddings.modality, embeddings.dimension) == ("text", 2)
    assert Embeddings.from_json({**body, "dimension": None}).dimension == 2
    with pytest.raises(InvalidResponse):
        Embeddings.from_json({**body, "embeddings": [1.0]})
    with pytest.raises(InvalidResponse):
        Embeddings.from_json({**body, "embeddings": None})


def test_readiness_is_true_only_for_a_200_that_says_ready() -> None:
    ready = Readiness.from_json({"status": "ready", "models": {"m": "ready"}}, 200)
    loading = Readiness.from_json({"status": "not_ready", "models": {"m": "it is loading"}}, 503)
    empty = Readiness.from_json({"status": "not_ready", "models": {}, "reason": "no models"}, 503)

    assert ready.ready and ready.models == {"m": "ready"}
    assert not loading.ready and loading.models == {"m": "it is loading"}
    assert not empty.ready and empty.reason == "no models"


def test_model_info() -> None:
    info = ModelInfo.from_json(
        {"name": "m", "state": "failed", "ready": False, "error": "boom", "version": 1}
    )

    assert (info.name, info.state, info.ready, info.error, info.version) == (
        "m",
        "failed",
        False,
        "boom",
        "1",
    )
    assert info.metadata is None
