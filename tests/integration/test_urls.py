"""Image URLs on a real server: fetched from an allowed loopback host, refused everywhere else.

Only loopback servers that this test starts are ever contacted: private, link-local and
metadata targets are refused before any connection is made.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess, cat_jpeg
from tests.repository import add_default_model

pytestmark = pytest.mark.integration

CAT = cat_jpeg()


class _ImageHost(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/cat.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(CAT)))
            self.end_headers()
            self.wfile.write(CAT)
        elif self.path == "/to-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _serve(tmp_path_factory: pytest.TempPathFactory, name: str, env: dict[str, str]) -> ServerProcess:
    repo: Path = tmp_path_factory.mktemp(f"{name}-repo")
    add_default_model(repo)
    server = ServerProcess(repo, env={"IE_URLS__ENABLED": "true", **env})
    return server.start(tmp_path_factory.mktemp(f"{name}-logs") / "server.log")


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = _serve(tmp_path_factory, "strict", {})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def internal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"IE_URLS__ALLOW_PRIVATE_NETWORKS": "true", "IE_URLS__ALLOWED_HOSTS": json.dumps(["127.0.0.1"])}
    server = _serve(tmp_path_factory, "internal", env)
    yield server
    server.stop()


def predict_url(server: ServerProcess, url: str) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json={"url": url}, timeout=30)


def test_an_allowed_host_is_fetched_and_classified(internal: ServerProcess, image_host: str) -> None:
    response = predict_url(internal, f"{image_host}/cat.jpg")
    assert response.status_code == 200, response.text
    labels = {p["label"] for p in response.json()["predictions"][:3]}
    assert labels & {"tabby", "tiger cat", "Egyptian cat"}


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/cat.jpg",  # loopback: the image host itself
        "http://localhost:{port}/cat.jpg",
        "http://[::1]:{port}/cat.jpg",
        "http://2130706433:{port}/cat.jpg",  # 127.0.0.1 spelled as a number
        "http://10.0.0.1/cat.jpg",  # private
        "http://192.168.1.1/cat.jpg",
        "http://169.254.1.1/cat.jpg",  # link-local
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "file:///etc/passwd",
        "ftp://127.0.0.1/cat.jpg",
    ],
)
def test_private_loopback_and_link_local_targets_are_refused(
    strict: ServerProcess, image_host: str, target: str
) -> None:
    port = image_host.rsplit(":", 1)[1]
    response = predict_url(strict, target.format(port=port))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["type"] == "url_refused"


def test_a_redirect_to_metadata_is_refused_even_from_an_allowed_host(
    internal: ServerProcess, image_host: str
) -> None:
    response = predict_url(internal, f"{image_host}/to-metadata")
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "url_refused"


def test_hosts_outside_the_allow_list_are_refused(internal: ServerProcess, image_host: str) -> None:
    port = image_host.rsplit(":", 1)[1]
    response = predict_url(internal, f"http://localhost:{port}/cat.jpg")
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "url_refused"


def test_a_missing_image_is_a_fetch_failure(internal: ServerProcess, image_host: str) -> None:
    response = predict_url(internal, f"{image_host}/nothing.jpg")
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "url_fetch_failed"
