"""The Python client and ``inference-engine predict`` against real servers over loopback HTTP.

No fakes: the servers are ``inference-engine serve`` processes, the failures are the real ones
(a model still loading answers 503 + Retry-After; a port with nothing on it refuses connections).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from inference_engine.client import (
    AsyncInferenceClient,
    BadInput,
    CircuitBreaker,
    CircuitOpen,
    ConnectError,
    InferenceClient,
    NotFound,
    Overloaded,
    RetryPolicy,
    Unauthorized,
)
from tests.helpers import ServerProcess, cat_jpeg, coffee_png, encode, free_port
from tests.repository import add_colour_model, add_colour_text_model

pytestmark = pytest.mark.integration

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat", "lynx"}
GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")
RED = encode(np.full((32, 32, 3), (250, 10, 10), np.uint8), "PNG")
BLUE = encode(np.full((40, 40, 3), (10, 10, 250), np.uint8), "JPEG")
TEXT = b"this is not an image\n"
KEY = "client-test-key-0123456789"


class Sleeps:
    """A real ``time.sleep`` that also records what the client asked for."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[InferenceClient]:
    with InferenceClient(server.url, timeout=60) as c:
        yield c


def test_predict_a_real_photo_with_the_default_model(client: InferenceClient) -> None:
    prediction = client.predict(cat_jpeg(), top_k=3, request_id="client-cat-1")

    assert prediction.model == "efficientnet_lite0"
    assert prediction.model_version == "1"
    assert prediction.request_id == "client-cat-1"
    assert len(prediction.predictions) == 3
    assert prediction.top1 is not None
    assert CAT_CLASSES & set(prediction.labels), prediction.labels
    assert prediction.scores == sorted(prediction.scores, reverse=True)
    assert prediction.timings_ms["total"] > 0


def test_predict_from_a_path_with_a_named_model(client: InferenceClient, tmp_path: Path) -> None:
    path = tmp_path / "cat.jpg"
    path.write_bytes(cat_jpeg())

    prediction = client.predict(path, model="efficientnet_lite0", top_k=1)

    assert prediction.top1 is not None and prediction.top1.label in CAT_CLASSES
    assert prediction.top1.index is not None


async def test_async_client_predicts_concurrently(server: ServerProcess) -> None:
    async with AsyncInferenceClient(server.url, timeout=60) as client:
        cat, coffee, tiny = await asyncio.gather(
            client.predict(cat_jpeg(), top_k=3),
            client.predict(coffee_png(), model="efficientnet_lite0", top_k=3),
            client.predict(GREEN, model="tiny_cnn", top_k=2),
        )
        health = await client.health()
        models = await client.models()

    assert CAT_CLASSES & set(cat.labels)
    assert coffee.model == "efficientnet_lite0" and len(coffee.predictions) == 3
    assert tiny.model == "tiny_cnn" and set(tiny.labels) <= {"alpha", "beta", "gamma", "delta"}
    assert health == {"status": "ok"}
    assert {"efficientnet_lite0", "tiny_cnn"} <= {m.name for m in models}


def test_bad_input_raises_the_servers_error_and_is_not_retried(server: ServerProcess) -> None:
    sleeps = Sleeps()
    with InferenceClient(server.url, sleep=sleeps, retry=RetryPolicy(max_attempts=5)) as client:
        with pytest.raises(BadInput) as caught:
            client.predict(TEXT)
        breaker = client.breaker

    error = caught.value
    assert error.status == 415
    assert error.code == "unsupported_media_type"
    assert "not a supported image" in error.message
    assert error.request_id
    assert sleeps.waits == []  # no second attempt
    assert breaker is not None and breaker.consecutive_failures == 0  # the server is fine


def test_unknown_model_is_not_found(client: InferenceClient) -> None:
    with pytest.raises(NotFound) as caught:
        client.predict(GREEN, model="no_such_model")

    assert caught.value.code == "model_not_found"


def test_operational_calls(server: ServerProcess) -> None:
    with InferenceClient(server.url, retry=RetryPolicy(max_attempts=1)) as client:
        health = client.health()
        readiness = client.ready()
        models = {m.name: m for m in client.models()}
        lite = client.model("efficientnet_lite0")
        with pytest.raises(Overloaded) as broken:
            client.model("broken")

    assert health == {"status": "ok"}
    # The session's repository holds models that fail to load, so /ready is 503: an answer, not an error.
    assert not readiness.ready and readiness.status == "not_ready"
    assert readiness.models["broken"].startswith("it failed to load")
    assert models["efficientnet_lite0"].ready and models["broken"].state == "failed"
    assert lite.metadata is not None and lite.metadata["labels_count"] == 1000
    assert broken.value.status == 503 and broken.value.retry_after is not None


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with a small vision-language model: zero-shot labels and embeddings, no weights."""
    repo = tmp_path_factory.mktemp("colours")
    add_colour_text_model(repo, "colours")
    process = ServerProcess(repo)
    process.start(tmp_path_factory.mktemp("colours-logs") / "server.log")
    yield process
    process.stop()


def test_zero_shot_labels_and_embeddings(colours: ServerProcess) -> None:
    with InferenceClient(colours.url) as client:
        ranked = client.predict(BLUE, model="colours", labels=["red", "a photo of something blue"])
        own = client.predict(RED, model="colours", top_k=1)
        images = client.embed_images([RED, BLUE], model="colours")
        texts = client.embed_texts(["red", "blue", "green"], model="colours")

    assert ranked.labels == ["a photo of something blue", "red"]
    assert own.labels == ["red"]
    assert (images.modality, images.dimension, len(images.embeddings)) == ("image", 3, 2)
    assert (texts.modality, texts.dimension, len(texts.embeddings)) == ("text", 3, 3)
    assert images.model == "colours" and images.request_id
    similarity = np.array(images.embeddings) @ np.array(texts.embeddings).T
    assert similarity.argmax(axis=1).tolist() == [0, 1]  # red image ~ "red", blue image ~ "blue"
    assert all(abs(np.linalg.norm(v) - 1.0) < 1e-5 for v in images.embeddings + texts.embeddings)


async def test_async_zero_shot_and_embeddings(colours: ServerProcess) -> None:
    async with AsyncInferenceClient(colours.url) as client:
        ranked, texts = await asyncio.gather(
            client.predict(RED, model="colours", labels=["green", "red"]),
            client.embed_texts(["white"], model="colours"),
        )
        images = await client.embed_images([GREEN], model="colours")
        info = await client.model("colours")
        readiness = await client.ready()

    assert ranked.labels == ["red", "green"]
    assert texts.dimension == 3 and len(texts.embeddings) == 1
    assert images.modality == "image"
    assert info.ready and info.metadata is not None
    assert readiness.ready and readiness.models == {"colours": "ready"}


def test_a_task_the_model_lacks_is_bad_input(client: InferenceClient) -> None:
    with pytest.raises(BadInput) as caught:
        client.embed_texts(["a cat"], model="tiny_cnn")

    assert caught.value.status == 400
    assert caught.value.code == "unsupported_task"


def test_503_with_retry_after_while_the_model_loads_is_retried_until_it_answers(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_colour_model(repo, "colour", load_delay_s=5)
    server = ServerProcess(repo).start(tmp_path / "server.log", wait_ready=False)
    try:
        raw = httpx.post(f"{server.url}/predict", content=GREEN, timeout=10)
        assert raw.status_code == 503, raw.text  # what the client is about to see, checked directly
        assert raw.json()["error"]["type"] == "model_not_ready"
        assert raw.headers["retry-after"] == "1"
        sleeps = Sleeps()
        # A loading server is unavailable: with the default breaker (5 failures) the client would
        # give up early, which is right in production; here the point is the retries.
        with InferenceClient(
            server.url,
            retry=RetryPolicy(max_attempts=30),
            breaker=CircuitBreaker(failure_threshold=100),
            sleep=sleeps,
        ) as client:
            started = time.monotonic()
            prediction = client.predict(GREEN)
            elapsed = time.monotonic() - started
            assert client.ready().ready
    finally:
        server.stop()

    assert prediction.top1 is not None and prediction.top1.label == "green"
    assert sleeps.waits, "the client answered without ever seeing the 503"
    assert all(1.0 <= w <= 1.2 for w in sleeps.waits), sleeps.waits  # Retry-After: 1, plus jitter
    assert elapsed >= sum(sleeps.waits)


def test_breaker_opens_on_a_dead_server_fails_fast_then_closes_when_a_server_comes_back(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens here
    url = f"http://127.0.0.1:{port}"
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout_s=1.0)
    client = InferenceClient(url, api_key=KEY, retry=RetryPolicy(max_attempts=1), breaker=breaker)

    for _ in range(3):
        with pytest.raises(ConnectError):
            client.predict(GREEN)
    assert breaker.state == "open"

    # While open, calls fail without connecting. Prove it: listen on the port and see nobody knock.
    listener = socket.create_server(("127.0.0.1", port))
    listener.setblocking(False)
    try:
        durations = []
        for _ in range(50):
            started = time.perf_counter()
            with pytest.raises(CircuitOpen) as caught:
                client.predict(GREEN)
            durations.append(time.perf_counter() - started)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 1.0
    assert statistics.median(durations) < 0.005, (
        durations
    )  # measured: ~0.1 ms (a PNG encode is not even done)

    # Half-open after the cool-down: one probe goes out, finds nothing, and the breaker re-opens.
    time.sleep(1.0)
    assert breaker.state == "half_open"
    with pytest.raises(ConnectError):
        client.predict(GREEN)
    assert breaker.state == "open"

    # A real server (with API keys on) comes up on that port; the next probe closes the breaker.
    repo = tmp_path / "repo"
    add_colour_model(repo, "colour")
    env = {
        "IE_AUTH__ENABLED": "true",
        "IE_AUTH__API_KEY_HASHES": json.dumps([hashlib.sha256(KEY.encode()).hexdigest()]),
    }
    server = ServerProcess(repo, port=port, env=env, headers={"authorization": f"Bearer {KEY}"})
    server.start(tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 2.0
        while breaker.state != "half_open" and time.monotonic() < deadline:  # if it started within 1 s
            time.sleep(0.05)
        assert breaker.state == "half_open"
        prediction = client.predict(GREEN)
        assert breaker.state == "closed"
        assert prediction.top1 is not None and prediction.top1.label == "green"

        with InferenceClient(url) as keyless, pytest.raises(Unauthorized) as refused:
            keyless.predict(GREEN)
        assert refused.value.status == 401 and refused.value.code == "unauthorized"
        assert keyless.breaker is not None and keyless.breaker.state == "closed"
    finally:
        client.close()
        server.stop()


# --- inference-engine predict ---------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "inference_engine", "predict", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_cli_predicts_a_folder_as_json_lines(server: ServerProcess, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    (folder / "cat.jpg").write_bytes(cat_jpeg())
    (folder / "coffee.PNG").write_bytes(coffee_png())
    (folder / "nested" / "green.png").write_bytes(GREEN)
    (folder / "notes.txt").write_bytes(TEXT)  # not an image suffix: skipped by the walk

    result = run_cli(str(folder), "--url", server.url, "--model", "tiny_cnn", "--top-k", "2", "--json")

    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["cat.jpg", "coffee.PNG", "green.png"]
    assert all(r["ok"] and r["model"] == "tiny_cnn" and len(r["predictions"]) == 2 for r in records)
    assert "%|" not in result.stderr  # stderr is not a terminal: no progress bar


def test_cli_text_output_with_the_default_model(server: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "cat.jpg"
    path.write_bytes(cat_jpeg())

    result = run_cli(str(path), "--url", server.url, "--top-k", "2")

    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"{path}: ")
    assert CAT_CLASSES & {part.rsplit(" (", 1)[0] for part in line.split(": ", 1)[1].split(", ")}


def test_cli_reports_the_servers_error_and_exits_1(server: ServerProcess, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_bytes(TEXT)
    cat = tmp_path / "cat.jpg"
    cat.write_bytes(cat_jpeg())

    result = run_cli(str(text), str(cat), "--url", server.url, "--json", "--no-progress")

    assert result.returncode == 1
    assert f"{text}: error: 415 unsupported_media_type: the payload is not a supported image" in result.stderr
    failed, succeeded = (json.loads(line) for line in result.stdout.splitlines())
    assert failed["ok"] is False and failed["error"]["type"] == "unsupported_media_type"
    assert failed["error"]["status"] == 415 and failed["error"]["request_id"]
    assert succeeded["ok"] is True
