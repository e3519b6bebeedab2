"""A client that disconnects mid-upload is nginx's 499, not a server error.

A real server process; raw TCP sockets declare ``Content-Length: 1000000`` (under the test
configuration's 5 MB cap), send a part of the body and close. Each cut-short upload, on every route
that reads a body (raw, multipart and JSON bodies alike), must be counted in
``inference_engine_requests_total`` with status ``499``, never ``500``; its access line must say
status 499 and error ``client_disconnected``; the log must carry no traceback; and the server must go
on answering.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.helpers import ServerProcess, encode, metric_value
from tests.repository import add_colour_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MODEL = "colour"
DECLARED = 1_000_000
BOUNDARY = "cut-short-boundary"
RED = encode(np.full((32, 32, 3), (250, 10, 10), np.uint8), "PNG")
REQUESTS = "inference_engine_requests_total"
WAIT_S = 15.0

#: (route label, path, content type, the first bytes of a body that never finishes)
CUT_SHORT = [
    ("/v1/models/{name}/predict", f"/v1/models/{MODEL}/predict", "image/png", RED + b"\0" * 8192),
    (
        "/v1/models/{name}/predict",
        f"/v1/models/{MODEL}/predict",
        f"multipart/form-data; boundary={BOUNDARY}",
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="red.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + RED
        + b"\0" * 8192,
    ),
    ("/v1/models/{name}/embed", f"/v1/models/{MODEL}/embed", "image/png", RED + b"\0" * 8192),
    (
        "/v1/embeddings",
        "/v1/embeddings",
        "application/json",
        f'{{"model": "{MODEL}", "input": ["'.encode() + b"a" * 8192,
    ),
    (
        "/v2/models/{name}/infer",
        f"/v2/models/{MODEL}/infer",
        "application/json",
        b'{"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 3], "data": [' + b"0.5, " * 2000,
    ),
]
ROUTES = sorted({route for route, *_ in CUT_SHORT})


@pytest.fixture(scope="module")
def colour_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("disconnect-repository")
    add_colour_model(repo, MODEL)
    process = ServerProcess(repo)
    process.start(tmp_path_factory.mktemp("disconnect-logs") / "server.log", timeout=60)
    yield process
    process.stop()


def cut_short_upload(port: int, path: str, content_type: str, partial: bytes) -> None:
    """Declare a 1 MB body, send ``partial`` of it, and hang up."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {DECLARED}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + partial)
        time.sleep(0.2)  # the route is reading the body now: the disconnect comes mid-upload


def counted(client: httpx.Client, route: str, status: str | None = None) -> float:
    labels = {"route": route} if status is None else {"route": route, "status": status}
    return metric_value(client.get("/metrics").text, REQUESTS, **labels)


def access_lines(log: str) -> list[dict[str, object]]:
    lines = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("logger") == "inference_engine.access":
            lines.append(record)
    return lines


def test_a_client_disconnect_mid_upload_is_a_499_without_a_traceback(colour_server: ServerProcess) -> None:
    server = colour_server
    with httpx.Client(base_url=server.url, timeout=10) as client:
        before = {route: counted(client, route) for route in ROUTES}
        expected = {route: sum(1 for r, *_ in CUT_SHORT if r == route) for route in ROUTES}

        for _, path, content_type, partial in CUT_SHORT:
            cut_short_upload(server.port, path, content_type, partial)

        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            if all(counted(client, r) - before[r] >= expected[r] for r in ROUTES):
                break
            time.sleep(0.1)
        metrics = client.get("/metrics").text
        seen = {
            route: {
                status: metric_value(metrics, REQUESTS, route=route, status=status)
                for status in ("499", "500")
            }
            for route in ROUTES
        }
        for route in ROUTES:
            assert seen[route]["500"] == 0, f"{route}: a disconnect counted as a 500: {seen}"
            assert seen[route]["499"] == expected[route], f"{route}: {seen}"

        log = server.log()
        assert "Traceback" not in log, log[-4000:]
        assert "unhandled error" not in log, log[-4000:]
        disconnects = [
            line
            for line in access_lines(log)
            if line.get("status") == 499 and line.get("error") == "client_disconnected"
        ]
        assert len(disconnects) == len(CUT_SHORT), log[-4000:]

        answer = client.post(
            f"/v1/models/{MODEL}/predict", content=RED, headers={"content-type": "image/png"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] == "red"
