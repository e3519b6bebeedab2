"""The per-call rules that need no network: request ids, peers, deadlines."""

from __future__ import annotations

import pytest

from inference_engine.access import AccessPolicy
from inference_engine.errors import BadRequest
from inference_engine.metrics import Metrics
from inference_engine.requestid import valid_request_id
from inference_engine.rpc.call import Calls, peer_address
from inference_engine.settings import AuthSettings, RateLimitSettings, ServerSettings


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:50512", "127.0.0.1"),
        ("ipv6:[::1]:50512", "::1"),
        ("unix:/tmp/socket", "unix:/tmp/socket"),
    ],
)
def test_peer_address(peer: str, address: str) -> None:
    assert peer_address(peer) == address


def test_request_ids_follow_the_http_rule() -> None:
    assert valid_request_id("abc-1.2:3_x")
    assert not valid_request_id("")
    assert not valid_request_id("has space")
    assert not valid_request_id("x" * 129)


def calls() -> Calls:
    server = ServerSettings(request_timeout_s=10, max_request_timeout_s=30)
    access = AccessPolicy.from_settings(AuthSettings(), RateLimitSettings())
    return Calls(server, Metrics(), access, access_log=False)


def test_deadline_from_grpc_capped_by_configuration() -> None:
    runner = calls()
    unbounded = runner.open((), None)
    assert unbounded.deadline - unbounded.ctx.started == pytest.approx(10)
    short = runner.open((), 0.25)
    assert short.deadline - short.ctx.started == pytest.approx(0.25)
    long = runner.open((), 3600)
    assert long.deadline - long.ctx.started == pytest.approx(30)


def test_request_id_from_metadata_or_the_streamed_request() -> None:
    runner = calls()
    assert runner.open((("x-request-id", "mine"),), None).request_id == "mine"
    assert runner.open((("x-request-id", "not valid!"),), None).request_id != "not valid!"
    assert runner.open((("x-request-id", "mine"),), None, request_id="s-1").request_id == "s-1"
    assert runner.open((("bin-bin", b"\x00"),), None).metadata == {}


def test_routing_key_is_bounded() -> None:
    runner = calls()
    assert runner.open((("x-routing-key", "user-7"),), None).routing_key == "user-7"
    assert runner.open((), None).routing_key is None
    with pytest.raises(BadRequest):
        _ = runner.open((("x-routing-key", "k" * 300),), None).routing_key
