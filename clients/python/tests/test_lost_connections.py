"""A connection lost before the answer: idempotent calls are sent again, others are not.

A server process that is killed or restarted closes or resets the connections it had, with the
requests on them unanswered. Everything this client sends is idempotent (inference and reads
change nothing on the server), so such a call is retried like a refused connection, within the
same attempts, backoff and budget; a request not marked idempotent still fails at once. The last
tests use a loopback "server" that drops the first connections and answers the next one.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator

import httpx
import pytest

from client_support import FakeClock
from inference_engine_client import (
    AsyncInferenceClient,
    CircuitBreaker,
    ConnectError,
    InferenceClient,
    RetryPolicy,
    Timeout,
)
from inference_engine_client._core import (
    HEALTH,
    MODELS,
    READY,
    ClientSettings,
    RequestSpec,
    embed_request,
    model_request,
    predict_request,
)

LOST = [
    httpx.RemoteProtocolError("Server disconnected without sending a response."),
    httpx.ReadError("[Errno 104] Connection reset by peer"),
    httpx.WriteError("[Errno 32] Broken pipe"),
    httpx.CloseError("[Errno 104] Connection reset by peer"),
]
LOST_IDS = [type(e).__name__ for e in LOST]
PREDICTION = {"model": "m", "model_version": "1", "predictions": [{"label": "cat", "index": 0, "score": 0.9}]}


def settings(breaker: CircuitBreaker | None = None, attempts: int = 3) -> ClientSettings:
    return ClientSettings(
        connect_timeout_s=5.0,
        read_timeout_s=30.0,
        total_timeout_s=60.0,
        retry=RetryPolicy(max_attempts=attempts, random=lambda: 0.5),
        breaker=breaker,
        clock=FakeClock(),
        wall_clock=lambda: 0.0,
    )


def test_every_request_of_the_client_is_idempotent_and_a_new_kind_is_not_by_default() -> None:
    specs = [
        predict_request(b"x", model=None, top_k=None, labels=None),
        predict_request(b"x", model="clip", top_k=3, labels=["cat", "dog"]),
        embed_request("clip", images=[b"x"]),
        embed_request("clip", texts=["a cat"]),
        HEALTH,
        READY,
        MODELS,
        model_request("m"),
    ]

    assert all(spec.idempotent for spec in specs)
    assert not RequestSpec("POST", "/v1/models/m/load").idempotent


@pytest.mark.parametrize("lost", LOST, ids=LOST_IDS)
def test_an_idempotent_call_whose_connection_was_lost_is_retried_then_raised(
    lost: httpx.TransportError,
) -> None:
    breaker = CircuitBreaker(failure_threshold=10)
    call = settings(breaker).call(predict_request(b"x", model=None, top_k=None, labels=None), None, None)

    call.begin()
    assert call.failed(lost) == pytest.approx(0.05)  # full jitter at 0.5 of 0.1 s
    call.begin()
    assert call.failed(lost) == pytest.approx(0.1)
    call.begin()
    with pytest.raises(ConnectError) as caught:  # the third attempt was the last
        call.failed(lost)

    assert caught.value.code == "connect_error"
    assert "failed before an answer" in caught.value.message
    assert type(lost).__name__ in caught.value.message
    assert caught.value.__cause__ is lost
    assert breaker.consecutive_failures == 3  # a lost connection still says the server is unwell


@pytest.mark.parametrize("lost", LOST, ids=LOST_IDS)
def test_a_request_not_marked_idempotent_is_not_sent_again(lost: httpx.TransportError) -> None:
    call = settings().call(RequestSpec("POST", "/v1/models/m/load"), None, None)
    call.begin()

    with pytest.raises(ConnectError) as caught:
        call.failed(lost)

    assert caught.value.__cause__ is lost
    assert call.attempts == 1


def test_a_read_timeout_is_still_not_retried_for_an_idempotent_call() -> None:
    call = settings().call(predict_request(b"x", model=None, top_k=None, labels=None), None, None)
    call.begin()

    with pytest.raises(Timeout):  # the server has the request and is still working on it
        call.failed(httpx.ReadTimeout("slow"))


# -- over loopback: a server that drops connections, then answers ----------------------------------


def read_request(connection: socket.socket) -> bytes:
    """One HTTP/1.1 request: the head, then ``Content-Length`` bytes of body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return head


@pytest.fixture
def dropping_server() -> Iterator[tuple[str, list[bytes]]]:
    """Closes the first connection unanswered, resets the second, answers the third with a prediction.

    Yields the base URL and the request heads it read, one per connection.
    """
    heads: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        for n in range(3):
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(10)
                heads.append(read_request(connection))
                if n == 0:
                    continue  # closed with no answer: the client reads an end of stream
                if n == 1:  # SO_LINGER 0: the close is a reset
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    continue
                body = json.dumps(PREDICTION).encode()
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", heads
    finally:
        listener.close()
        thread.join(timeout=10)


def test_sync_client_carries_a_predict_over_two_lost_connections(
    dropping_server: tuple[str, list[bytes]],
) -> None:
    url, heads = dropping_server
    waits: list[float] = []
    with InferenceClient(
        url, retry=RetryPolicy(max_attempts=3, random=lambda: 1.0), sleep=waits.append
    ) as client:
        prediction = client.predict(b"x", request_id="same-id")

    assert prediction.top1 is not None and prediction.top1.label == "cat"
    assert waits == [0.1, 0.2]
    assert len(heads) == 3
    assert all(b"\r\nx-request-id: same-id" in head.lower() for head in heads)  # the same call, sent again


async def test_async_client_carries_a_predict_over_two_lost_connections(
    dropping_server: tuple[str, list[bytes]],
) -> None:
    url, heads = dropping_server
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    policy = RetryPolicy(max_attempts=3, random=lambda: 1.0)
    async with AsyncInferenceClient(url, retry=policy, sleep=sleep) as client:
        prediction = await client.predict(b"x", model="m")

    assert prediction.model == "m"
    assert waits == [0.1, 0.2]
    assert len(heads) == 3
