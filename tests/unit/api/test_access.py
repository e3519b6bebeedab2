"""API key checks and the access-control middleware, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.datastructures import Headers

from inference_engine.access import ApiKeys, hash_key
from inference_engine.api.access import presented_key
from inference_engine.errors import ConfigError
from inference_engine.metrics import Metrics
from inference_engine.server import build_app
from inference_engine.settings import Settings
from tests.helpers import in_process_client
from tests.repository import add_colour_model


def test_keys_are_compared_by_digest() -> None:
    keys = ApiKeys([hash_key("one"), hash_key("two")])
    assert keys.verify("two") == hash_key("two")
    assert keys.verify("three") is None
    assert keys.verify("") is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bearer  abc "}, "abc"),
        ({"x-api-key": "xyz"}, "xyz"),
        ({"authorization": "Basic abc"}, None),
        ({"authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers: dict[str, str], expected: str | None) -> None:
    assert presented_key(Headers(headers)) == expected


def test_auth_without_keys_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="api_key_hashes is empty"):
        build_app(Settings(model_repository=tmp_path, auth={"enabled": True}), Metrics())


@pytest.fixture
async def protected(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    add_colour_model(tmp_path, "colour")
    settings = Settings(
        model_repository=tmp_path,
        auth={"enabled": True, "api_key_hashes": [hash_key("k")], "protect_operational": True},
        rate_limit={"enabled": True, "rate": 1, "burst": 2},
    )
    app = build_app(settings, Metrics())
    async with in_process_client(app) as client:
        yield client


async def test_protected_operational_routes_need_a_key(protected: httpx.AsyncClient) -> None:
    response = await protected.get("/health")
    assert response.status_code == 401
    assert response.headers["x-request-id"]
    assert (await protected.get("/health", headers={"x-api-key": "k"})).status_code == 200


async def test_failed_attempts_are_rate_limited_per_address(protected: httpx.AsyncClient) -> None:
    statuses = [(await protected.get("/info", headers={"x-api-key": "guess"})).status_code for _ in range(4)]
    assert statuses[:2] == [401, 401]
    assert statuses[2:] == [429, 429]


@pytest.fixture
async def controlled(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    add_colour_model(tmp_path, "colour")
    settings = Settings(
        model_repository=tmp_path,
        server={"model_control": True},
        auth={"enabled": True, "api_key_hashes": [hash_key("user")], "admin_key_hashes": [hash_key("admin")]},
    )
    app = build_app(settings, Metrics())
    async with in_process_client(app) as client:
        await app.state.service.wait_loaded()
        yield client


async def test_model_control_needs_an_admin_key(controlled: httpx.AsyncClient) -> None:
    unload = "/v2/repository/models/colour/unload"
    assert (await controlled.post(unload)).status_code == 401
    refused = await controlled.post(unload, headers={"x-api-key": "user"})
    assert refused.status_code == 403
    assert refused.json() == {"error": "model control needs an admin key (auth.admin_key_hashes)"}
    assert (await controlled.post("/v2/repository/index", headers={"x-api-key": "user"})).status_code == 403
    admin = {"x-api-key": "admin"}
    assert (await controlled.post(unload, headers=admin)).status_code == 200
    index = await controlled.post("/v2/repository/index", headers=admin, json={})
    assert index.json() == [{"name": "colour", "state": "UNAVAILABLE", "reason": "unloaded"}]
    # An admin key is a key: it is accepted on every other route too.
    assert (await controlled.get("/v1/models", headers=admin)).status_code == 200
    assert (await controlled.post("/v2/repository/models/colour/load", headers=admin)).status_code == 200
    assert (await controlled.get("/v2/models/colour/ready", headers=admin)).status_code == 200


async def test_model_control_is_off_unless_configured(tmp_path: Path) -> None:
    add_colour_model(tmp_path, "colour")
    app = build_app(Settings(model_repository=tmp_path), Metrics())
    async with in_process_client(app) as client:
        refused = await client.post("/v2/repository/models/colour/load")
        assert refused.status_code == 403 and "server.model_control" in refused.json()["error"]
        assert (await client.post("/v2/repository/index")).status_code == 200  # reading is allowed
