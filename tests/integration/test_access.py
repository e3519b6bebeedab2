"""API keys and rate limits on a real server: 401 and 429 with the documented headers."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.helpers import ServerProcess, encode
from tests.repository import add_colour_model

pytestmark = pytest.mark.integration

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "second-key-with-its-own-limit"
GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def refill() -> None:
    """Let every bucket of this module's server (rate 2/s, burst 3) fill up again."""
    time.sleep(1.6)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("guarded-repo")
    add_colour_model(repo, "colour")
    env = {
        "IE_AUTH__ENABLED": "true",
        "IE_AUTH__API_KEY_HASHES": json.dumps([digest(KEY), digest(OTHER_KEY)]),
        "IE_RATE_LIMIT__ENABLED": "true",
        "IE_RATE_LIMIT__RATE": "2",
        "IE_RATE_LIMIT__BURST": "3",
        "IE_RATE_LIMIT__OVERRIDES": json.dumps({digest(OTHER_KEY): {"rate": 100, "burst": 50}}),
    }
    server = ServerProcess(repo, env=env, headers={"x-api-key": OTHER_KEY})
    server.start(tmp_path_factory.mktemp("guarded-logs") / "server.log")
    yield server
    server.stop()


def test_no_key_or_a_wrong_key_is_401_and_guessing_is_rate_limited(guarded: ServerProcess) -> None:
    refill()
    with httpx.Client(base_url=guarded.url) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
            response = client.post("/predict", content=GREEN, headers=headers)
            assert response.status_code == 401, headers
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["error"]["type"] == "unauthorized"
        # Failed attempts take tokens from the address's bucket (burst 3): the fourth guess is refused.
        guess = client.post("/predict", content=GREEN, headers={"authorization": "Basic x"})
        assert guess.status_code == 429
        assert guess.json()["error"]["type"] == "rate_limited"


def test_probes_stay_open_and_info_needs_a_key(guarded: ServerProcess) -> None:
    refill()
    with httpx.Client(base_url=guarded.url) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/ready").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/v2/health/live").status_code == 200  # V2 probes (KServe, Triton) too
        assert client.get("/v2/health/ready").status_code == 200
        assert client.get("/info").status_code == 401
        assert client.get("/v2/models/stats").status_code == 401


def test_both_header_forms_are_accepted(guarded: ServerProcess) -> None:
    with httpx.Client(base_url=guarded.url) as client:
        assert client.post("/predict", content=GREEN, headers={"x-api-key": OTHER_KEY}).status_code == 200
        response = client.post("/predict", content=GREEN, headers={"authorization": f"Bearer {OTHER_KEY}"})
        assert response.status_code == 200
        assert int(response.headers["x-ratelimit-limit"]) == 50  # this key's override


def test_past_the_burst_is_429_with_headers_then_recovers_after_retry_after(guarded: ServerProcess) -> None:
    auth = {"authorization": f"Bearer {KEY}"}
    refill()
    with httpx.Client(base_url=guarded.url, headers=auth) as client:
        responses = [client.post("/predict", content=GREEN) for _ in range(6)]
        statuses = [r.status_code for r in responses]
        assert statuses[:3] == [200, 200, 200], statuses
        assert 429 in statuses[3:]
        for response in responses:
            assert response.headers["x-ratelimit-limit"] == "3"
            assert {"x-ratelimit-remaining", "x-ratelimit-reset"} <= set(response.headers)
        limited = next(r for r in responses if r.status_code == 429)
        assert limited.json()["error"]["type"] == "rate_limited"
        assert limited.headers["x-ratelimit-remaining"] == "0"
        retry_after = int(limited.headers["retry-after"])
        assert 1 <= retry_after <= 2
        time.sleep(retry_after)
        assert client.post("/predict", content=GREEN).status_code == 200


def test_every_response_carries_security_headers(guarded: ServerProcess) -> None:
    with httpx.Client(base_url=guarded.url) as client:
        for response in (client.get("/health"), client.post("/predict", content=GREEN)):
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert "default-src 'none'" in response.headers["content-security-policy"]
            assert response.headers["cache-control"] == "no-store"
