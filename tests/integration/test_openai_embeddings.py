"""OpenAI-style embeddings, driven by the official ``openai`` client against a tiny CLIP."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest

from tests.helpers import ServerProcess, cat_jpeg, coffee_png
from tests.hf_models import build_tiny_clip
from tests.repository import add_tiny_cnn


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("openai")
    build_tiny_clip(repo / "clip")
    add_tiny_cnn(repo)
    process = ServerProcess(repo)
    process.start(tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    process.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60
    ) as connection:
        yield connection


def data_uri(payload: bytes, kind: str) -> str:
    return f"data:image/{kind};base64,{base64.b64encode(payload).decode()}"


def test_models_are_listed(client: openai.OpenAI) -> None:
    assert {model.id for model in client.models.list()} == {"clip", "tiny_cnn"}


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_text_embeddings(client: openai.OpenAI, encoding: str) -> None:
    response = client.embeddings.create(
        model="clip",
        input=["a photo of a cat", "a photo of a dog"],
        encoding_format=encoding,  # type: ignore[arg-type]
    )
    assert response.object == "list" and response.model == "clip"
    assert [item.index for item in response.data] == [0, 1]
    if encoding == "base64":  # asked for explicitly, the client hands the text over as it came
        vectors = np.array([np.frombuffer(base64.b64decode(i.embedding), "<f4") for i in response.data])  # type: ignore[arg-type]
    else:
        vectors = np.array([item.embedding for item in response.data])
    assert vectors.shape == (2, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert not np.allclose(vectors[0], vectors[1])
    assert response.usage.prompt_tokens == 10  # words


def test_the_client_default_base64_matches_float(client: openai.OpenAI) -> None:
    default = client.embeddings.create(model="clip", input="a photo of a cat")  # the client asks for base64
    floats = client.embeddings.create(model="clip", input="a photo of a cat", encoding_format="float")
    assert np.allclose(default.data[0].embedding, floats.data[0].embedding, atol=1e-6)


def test_image_embeddings_with_modality(client: openai.OpenAI, server: ServerProcess) -> None:
    response = client.embeddings.create(
        model="clip",
        input=[data_uri(cat_jpeg(), "jpeg"), data_uri(coffee_png(), "png")],
        encoding_format="float",
        extra_body={"modality": "image"},
    )
    vectors = np.array([item.embedding for item in response.data])
    assert vectors.shape == (2, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        native = http.post("/v1/models/clip/embed", files={"file": ("cat.jpg", cat_jpeg(), "image/jpeg")})
    assert np.allclose(
        native.json()["embeddings"][0], vectors[0], atol=1e-5
    )  # same answer as the native route


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"model": "nope", "input": "x"}, 404, "nope"),
        ({"model": "tiny_cnn", "input": "x"}, 400, "text embeddings"),
        ({"model": "clip", "input": [1, 2, 3]}, 400, "token ids"),
        ({"model": "clip", "input": []}, 400, "must not be empty"),
        ({"model": "clip", "input": "x", "dimensions": 8}, 400, "16 dimensions"),
        ({"model": "clip", "input": "not-an-image", "extra_body": {"modality": "image"}}, 400, "base64"),
        ({"model": "clip", "input": "x", "extra_body": {"modality": "audio"}}, 400, "modality"),
    ],
)
def test_errors_reach_the_client(
    client: openai.OpenAI, kwargs: dict[str, object], status: int, message: str
) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        client.embeddings.create(encoding_format="float", **kwargs)  # type: ignore[call-overload]
    assert raised.value.status_code == status
    assert message in str(raised.value.message)
