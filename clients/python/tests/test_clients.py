"""Both clients' attempt loops over real loopback sockets: a refused port, a server that never answers.

No HTTP server is needed for these failures; the ones with a server are in
tests/integration/test_client.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from client_support import free_port
from inference_engine_client import (
    AsyncInferenceClient,
    CircuitBreaker,
    CircuitOpen,
    ConnectError,
    InferenceClient,
    InvalidResponse,
    RetryPolicy,
    Timeout,
)
from inference_engine_client._core import decode_json, parse_health, parse_models


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def test_sync_client_retries_a_refused_connection_then_the_breaker_stops_it() -> None:
    waits: list[float] = []
    breaker = CircuitBreaker(failure_threshold=4, reset_timeout_s=60)
    policy = RetryPolicy(max_attempts=3, random=lambda: 1.0)
    with InferenceClient(
        f"http://127.0.0.1:{free_port()}", retry=policy, breaker=breaker, sleep=waits.append
    ) as c:
        with pytest.raises(ConnectError):
            c.predict(b"x")
        assert waits == [0.1, 0.2]
        with pytest.raises(CircuitOpen) as caught:  # the 4th refused connection opened it
            c.predict(b"x")
        assert isinstance(caught.value.__cause__, ConnectError)
        assert c.breaker is breaker and breaker.state == "open"


async def test_async_client_retries_a_refused_connection_then_the_breaker_stops_it() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    breaker = CircuitBreaker(failure_threshold=4, reset_timeout_s=60)
    policy = RetryPolicy(max_attempts=3, random=lambda: 1.0)
    async with AsyncInferenceClient(
        f"http://127.0.0.1:{free_port()}", retry=policy, breaker=breaker, sleep=sleep
    ) as client:
        with pytest.raises(ConnectError):
            await client.predict(b"x")
        assert waits == [0.1, 0.2]
        with pytest.raises(CircuitOpen):
            await client.embed_texts(["x"], model="m")
        assert client.breaker is breaker
        with pytest.raises(ConnectError):  # the probes bypass the breaker
            await client.health()


def test_a_read_timeout_is_raised_at_once_and_the_server_was_told_the_deadline() -> None:
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def read_request() -> None:  # a "server" that reads the request and never answers
            connection, _ = listener.accept()
            with connection:
                connection.settimeout(2)
                while chunk := connection.recv(65536):  # until the client hangs up
                    received.append(chunk)

        reader = threading.Thread(target=read_request)
        reader.start()
        waits: list[float] = []
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = InferenceClient(url, read_timeout=0.25, sleep=waits.append, api_key="k")
        with client, pytest.raises(Timeout) as caught:
            client.predict(b"x", request_id="abc")
        reader.join()

    assert caught.value.code == "read_timeout"
    assert waits == []
    head = b"".join(received).lower()
    assert head.startswith(b"post /predict http/1.1")
    assert b"\r\nx-request-timeout-ms: 250\r\n" in head
    assert b"\r\nx-request-id: abc\r\n" in head
    assert b"\r\nauthorization: bearer k\r\n" in head


async def test_a_cancelled_probe_frees_the_half_open_slot(silent_port: int) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=0.0)
    breaker.record_failure(breaker.acquire())
    async with AsyncInferenceClient(f"http://127.0.0.1:{silent_port}", breaker=breaker) as client:
        task = asyncio.create_task(client.predict(b"x"))
        await asyncio.sleep(0.2)  # the probe is sent and waits for an answer that never comes
        with pytest.raises(CircuitOpen, match="probe is in flight"):
            breaker.acquire()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert breaker.acquire().probe


def test_non_json_answers_are_invalid_responses() -> None:
    request = httpx.Request("GET", "http://server/v1/models")

    with pytest.raises(InvalidResponse, match="/v1/models is not JSON"):
        decode_json(httpx.Response(200, text="<html>", request=request))
    with pytest.raises(InvalidResponse, match="'models' list"):
        parse_models({"models": None})
    assert parse_health("ok") == {"status": "ok"}
