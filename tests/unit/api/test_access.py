"""API key checks and the access-control middleware, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.datastructures import Headers

from inference_engine.api.access import ApiKeys, hash_key, presented_key
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
