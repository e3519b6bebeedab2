"""Pinning a model version and sticky routing: the paths and headers both clients send.

The server is an ``httpx.MockTransport`` that records each request as it reaches the wire (its raw,
still-quoted path and its headers) and answers the way the server shapes its answers, with the
answering version in the JSON and in ``X-Model-Version``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from inference_engine_client import AsyncInferenceClient, Embeddings, InferenceClient, Prediction, RetryPolicy
from inference_engine_client._core import embed_request, predict_request

PREDICTION = {"model": "m", "model_version": "2", "predictions": [{"label": "cat", "index": 0, "score": 0.9}]}
EMBEDDINGS = {"model": "m", "model_version": "2", "modality": "text", "dimension": 1, "embeddings": [[1.0]]}


class Server:
    """Records the requests; answers with ``answers`` in turn (the last one repeats), or, given
    none, with a prediction or embeddings from version 2, by the route."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.requests: list[httpx.Request] = []
        self.answers = list(answers)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            body = EMBEDDINGS if request.url.path.endswith("/embed") else PREDICTION
            return httpx.Response(200, json=body, headers={"X-Model-Version": "2"})
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    @property
    def paths(self) -> list[str]:
        return [r.url.raw_path.decode("ascii") for r in self.requests]

    @property
    def keys(self) -> list[str | None]:
        return [r.headers.get("X-Routing-Key") for r in self.requests]


def sync_client(server: Server, **options: Any) -> InferenceClient:
    return InferenceClient("http://server", transport=httpx.MockTransport(server), **options)


def async_client(server: Server, **options: Any) -> AsyncInferenceClient:
    return AsyncInferenceClient("http://server", transport=httpx.MockTransport(server), **options)


@pytest.mark.parametrize(
    ("options", "path", "key"),
    [
        ({"model": "m", "version": "2"}, "/v1/models/m/versions/2/predict", None),
        (
            {"model": "m", "version": "2", "routing_key": "user-42"},
            "/v1/models/m/versions/2/predict",
            "user-42",
        ),
        ({"model": "m", "routing_key": "user-42"}, "/v1/models/m/predict", "user-42"),
        ({"model": "m"}, "/v1/models/m/predict", None),
        ({"routing_key": "user-42"}, "/predict", "user-42"),  # the default model, routed by key
        ({"model": "m", "version": "2", "top_k": 3}, "/v1/models/m/versions/2/predict?top_k=3", None),
    ],
)
def test_sync_predict_pins_the_version_in_the_path_and_sends_the_routing_key(
    options: dict[str, Any], path: str, key: str | None
) -> None:
    server = Server()
    with sync_client(server) as client:
        prediction = client.predict(b"\xff\xd8jpeg", **options)

    assert server.paths == [path]
    assert server.keys == [key]
    assert prediction.model_version == "2"


@pytest.mark.parametrize(
    ("options", "path", "key"),
    [
        ({"model": "m", "version": "2", "routing_key": "k"}, "/v1/models/m/versions/2/predict", "k"),
        ({"model": "m"}, "/v1/models/m/predict", None),
        ({"routing_key": "k"}, "/predict", "k"),
    ],
)
async def test_async_predict_pins_the_version_in_the_path_and_sends_the_routing_key(
    options: dict[str, Any], path: str, key: str | None
) -> None:
    server = Server()
    async with async_client(server) as client:
        prediction = await client.predict(b"\xff\xd8jpeg", **options)

    assert server.paths == [path]
    assert server.keys == [key]
    assert prediction.model_version == "2"


def test_sync_embeddings_pin_the_version_and_send_the_routing_key() -> None:
    server = Server()
    with sync_client(server) as client:
        images = client.embed_images([b"x"], model="clip", version="7", routing_key="k1")
        texts = client.embed_texts(["a cat"], model="clip", routing_key="k2")
        plain = client.embed_texts(["a cat"], model="clip", version="7")

    assert server.paths == [
        "/v1/models/clip/versions/7/embed",
        "/v1/models/clip/embed",
        "/v1/models/clip/versions/7/embed",
    ]
    assert server.keys == ["k1", "k2", None]
    assert [images.model_version, texts.model_version, plain.model_version] == ["2", "2", "2"]


async def test_async_embeddings_pin_the_version_and_send_the_routing_key() -> None:
    server = Server()
    async with async_client(server) as client:
        images = await client.embed_images([b"x"], model="clip", version="7", routing_key="k1")
        texts = await client.embed_texts(["a cat"], model="clip", routing_key="k2")

    assert server.paths == ["/v1/models/clip/versions/7/embed", "/v1/models/clip/embed"]
    assert server.keys == ["k1", "k2"]
    assert isinstance(images, Embeddings) and images.model_version == texts.model_version == "2"


@pytest.mark.parametrize(
    ("version", "segment"),
    [
        ("v/2", "v%2F2"),  # a slash would otherwise be a path separator
        ("a b", "a%20b"),
        ("%2F", "%252F"),  # already-quoted text is sent as itself, not decoded
        ("?x#y", "%3Fx%23y"),  # not a query or a fragment
        ("é", "%C3%A9"),
        ("1.0-rc+1", "1.0-rc%2B1"),
    ],
)
def test_odd_versions_are_quoted_whole_into_one_path_segment(version: str, segment: str) -> None:
    server = Server()
    with sync_client(server) as client:
        client.predict(b"x", model="m", version=version)
        client.embed_texts(["t"], model="m", version=version)

    assert server.paths == [
        f"/v1/models/m/versions/{segment}/predict",
        f"/v1/models/m/versions/{segment}/embed",
    ]
    assert server.requests[0].url.path == f"/v1/models/m/versions/{version}/predict"


@pytest.mark.parametrize("version", ["", ".", ".."])
def test_a_version_the_url_would_normalise_away_is_refused(version: str) -> None:
    # "..": httpx would turn /v1/models/m/versions/../predict into /v1/models/m/predict, the
    # unpinned route, and an answer from whatever version the weights picked.
    server = Server()
    with sync_client(server) as client:
        with pytest.raises(ValueError, match="not a version name"):
            client.predict(b"x", model="m", version=version)
        with pytest.raises(ValueError, match="not a version name"):
            client.embed_images([b"x"], model="m", version=version)

    assert server.requests == []


def test_a_version_without_a_model_is_a_value_error_and_sends_nothing() -> None:
    server = Server()
    with sync_client(server) as client, pytest.raises(ValueError, match=r"version='2' needs model="):
        client.predict(b"x", version="2")

    assert server.requests == []


async def test_the_async_client_refuses_a_version_without_a_model_too() -> None:
    server = Server()
    async with async_client(server) as client:
        with pytest.raises(ValueError, match="needs model="):
            await client.predict(b"x", version="2", routing_key="k")

    assert server.requests == []


@pytest.mark.parametrize("key", ["café", "a\nb", "tab\there"])
def test_a_routing_key_that_cannot_be_a_header_value_is_a_value_error(key: str) -> None:
    server = Server()
    with sync_client(server) as client, pytest.raises(ValueError, match="printable ASCII"):
        client.predict(b"x", model="m", routing_key=key)

    assert server.requests == []


def test_every_attempt_of_a_retried_call_carries_the_routing_key_and_the_pinned_path() -> None:
    busy = httpx.Response(
        503, json={"error": {"type": "queue_full", "message": "busy"}}, headers={"Retry-After": "0"}
    )
    server = Server(busy, httpx.Response(200, json=PREDICTION))
    waits: list[float] = []
    with sync_client(server, retry=RetryPolicy(random=lambda: 0.0), sleep=waits.append) as client:
        client.predict(b"x", model="m", version="2", routing_key="sticky")

    assert len(waits) == 1
    assert server.paths == ["/v1/models/m/versions/2/predict"] * 2
    assert server.keys == ["sticky", "sticky"]


@pytest.mark.parametrize(
    ("body_version", "header", "expected"),
    [
        ("3", "3", "3"),
        ("3", None, "3"),
        (None, "4", "4"),  # an answer whose JSON does not say (a custom handler, a proxy)
        ("3", "4", "3"),  # the JSON is the documented field
        (None, None, None),
    ],
)
def test_the_answering_version_comes_from_the_json_else_the_header(
    body_version: str | None, header: str | None, expected: str | None
) -> None:
    def answer(body: dict[str, Any]) -> httpx.Response:
        if body_version is not None:
            body = {**body, "model_version": body_version}
        else:
            body = {k: v for k, v in body.items() if k != "model_version"}
        return httpx.Response(200, json=body, headers={"X-Model-Version": header} if header else None)

    with sync_client(Server(answer(PREDICTION))) as client:
        prediction = client.predict(b"x", model="m")
    with sync_client(Server(answer(EMBEDDINGS))) as client:
        embeddings = client.embed_texts(["t"], model="m")

    assert prediction.model_version == expected
    assert embeddings.model_version == expected


@pytest.mark.parametrize("build", [Prediction.from_json, Embeddings.from_json])
def test_from_json_prefers_the_body_version_over_the_header(build: Callable[..., Any]) -> None:
    body = {**PREDICTION, **EMBEDDINGS, "model_version": 5}

    assert build(body, header_version="6").model_version == "5"
    assert build({**body, "model_version": None}, header_version="6").model_version == "6"
    assert build(body).model_version == "5"


def test_the_request_specs_carry_the_version_and_the_key() -> None:
    predict = predict_request(b"x", model="clip/b", top_k=None, labels=["a"], version="v 1", routing_key="k")
    embed = embed_request("clip", texts=["a"], version="1", routing_key="k")
    unrouted = embed_request("clip", texts=["a"])

    assert predict.path == "/v1/models/clip%2Fb/versions/v%201/predict"
    assert predict.headers == {"Content-Type": "application/json", "X-Routing-Key": "k"}
    assert embed.path == "/v1/models/clip/versions/1/embed"
    assert embed.headers["X-Routing-Key"] == "k"
    assert "X-Routing-Key" not in unrouted.headers
    assert predict.idempotent and embed.idempotent and predict.deadline
