"""The playground page in-process: served from package data, local assets only, off by config."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from inference_engine.access import hash_key
from inference_engine.api.playground import PAGE_CSP, load_assets
from inference_engine.metrics import Metrics
from inference_engine.server import build_app
from inference_engine.settings import Settings
from tests.helpers import in_process_client, metric_value
from tests.repository import add_colour_model

KEY = "playground-test-key"
STRICT_CSP = "default-src 'none'; frame-ancestors 'none'"


async def _client(repo: Path, **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    add_colour_model(repo, "colour")
    app = build_app(Settings(model_repository=repo, **settings), Metrics())  # type: ignore[arg-type]
    async with in_process_client(app) as client:
        yield client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _client(tmp_path):
        yield c


class _References(HTMLParser):
    """Every URL the page would load: src and href attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]
        self._in_script = tag == "script"
        if tag == "script" and "src" not in found:
            self.inline_scripts += 1
        if any(k.startswith("on") for k in found) or "style" in found:
            self.inline_scripts += 1  # inline handlers and styles would need 'unsafe-inline'

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


@pytest.mark.parametrize("path", ["/", "/playground"])
async def test_the_page_is_served_with_its_own_csp(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>inference-engine playground</title>" in response.text
    assert response.headers.get_list("content-security-policy") == [PAGE_CSP]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_the_page_references_only_its_own_assets(client: httpx.AsyncClient) -> None:
    parser = _References()
    parser.feed((await client.get("/")).text)
    assert parser.inline_scripts == 0
    assets = [u for u in parser.urls if not u.startswith("data:")]
    assert sorted(assets) == ["playground/assets/app.js", "playground/assets/style.css"]
    for url in assets:  # relative, so both / and /playground (and a path prefix) resolve them
        assert not re.match(r"^[a-z]+:|^//", url)
        assert (await client.get("/" + url)).status_code == 200


async def test_the_script_calls_only_relative_urls(client: httpx.AsyncClient) -> None:
    script = (await client.get("/playground/assets/app.js")).text
    assert "http://" not in script
    assert "https://" not in script
    assert "innerHTML" not in script  # server words are shown as text, never parsed as markup


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("app.js", "text/javascript; charset=utf-8"), ("style.css", "text/css; charset=utf-8")],
)
async def test_assets_have_content_types_and_revalidate(
    client: httpx.AsyncClient, name: str, content_type: str
) -> None:
    response = await client.get(f"/playground/assets/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers.get_list("cache-control") == ["no-cache"]
    assert response.content == load_assets()[name].body
    etag = response.headers["etag"]
    again = await client.get(f"/playground/assets/{name}", headers={"if-none-match": etag})
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.parametrize("name", ["nope.js", "index.html", "..%2Fapi%2Fapp.py", "app.py"])
async def test_unknown_assets_are_404_with_the_standard_body(client: httpx.AsyncClient, name: str) -> None:
    response = await client.get(f"/playground/assets/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


async def test_other_routes_keep_the_strict_defaults(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    assert response.headers.get_list("content-security-policy") == [STRICT_CSP]
    assert response.headers.get_list("cache-control") == ["no-store"]


async def test_page_requests_are_counted_under_their_route(client: httpx.AsyncClient) -> None:
    await client.get("/playground")
    assert (await client.head("/playground/assets/app.js")).status_code == 200
    text = (await client.get("/metrics")).text
    assert metric_value(text, "inference_engine_requests_total", route="/playground", status="200") == 1
    assert metric_value(text, "inference_engine_requests_total", route="/playground/assets/{name}") == 1


async def test_the_page_is_not_in_the_openapi_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths
    assert "/playground" not in paths


async def test_off_by_config_is_a_plain_404(tmp_path: Path) -> None:
    async for client in _client(tmp_path, server={"playground": False}):
        for path in ("/", "/playground", "/playground/assets/app.js"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["type"] == "not_found"
            assert response.headers["content-security-policy"] == STRICT_CSP


async def test_with_auth_the_page_loads_but_the_api_needs_the_key(tmp_path: Path) -> None:
    auth = {"enabled": True, "api_key_hashes": [hash_key(KEY)]}
    async for client in _client(tmp_path, auth=auth):
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/playground/assets/app.js")).status_code == 200
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.post("/")).status_code == 401  # only GET of the page skips the key
        keyed = await client.get("/v1/models", headers={"authorization": f"Bearer {KEY}"})
        assert keyed.status_code == 200


def test_the_prod_config_turns_it_off() -> None:
    text = (Path(__file__).resolve().parents[3] / "configs" / "prod.yaml").read_text()
    assert re.search(r"^\s+playground:\s*false\b", text, re.MULTILINE)
