"""One call's attempt loop without a network: timeouts, headers, retry decisions, breaker verdicts.

The responses are real ``httpx.Response`` values, built the way the server shapes its answers.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from client_support import FakeClock
from inference_engine_client import (
    BadInput,
    CircuitBreaker,
    CircuitOpen,
    ConnectError,
    NotFound,
    Overloaded,
    RetryPolicy,
    ServerError,
    Timeout,
    Unauthorized,
)
from inference_engine_client._core import TIMEOUT_HEADER, ClientSettings, RequestSpec, predict_request
from inference_engine_client.errors import InvalidResponse, error_from_response

REQUEST = httpx.Request("POST", "http://server/predict")
PREDICT = RequestSpec("POST", "/predict", content=b"x", deadline=True)


def response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    if body is None and status >= 400:
        body = {"error": {"type": f"code_{status}", "message": f"message {status}", "request_id": "rid"}}
    return httpx.Response(status, json=body, headers=headers, request=REQUEST)


def settings(
    clock: FakeClock,
    *,
    attempts: int = 3,
    total: float | None = 60.0,
    breaker: CircuitBreaker | None = None,
    gateway: bool = False,
) -> ClientSettings:
    return ClientSettings(
        connect_timeout_s=5.0,
        read_timeout_s=30.0,
        total_timeout_s=total,
        retry=RetryPolicy(max_attempts=attempts, random=lambda: 0.5, retry_gateway_errors=gateway),
        breaker=breaker,
        clock=clock,
        wall_clock=lambda: 0.0,
    )


def test_the_first_attempt_sends_its_read_timeout_as_the_server_deadline() -> None:
    call = settings(FakeClock()).call(PREDICT, None, "my-id")

    request = call.begin()

    assert request["headers"][TIMEOUT_HEADER] == "30000"
    assert request["headers"]["X-Request-ID"] == "my-id"
    assert request["timeout"] == httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)
    assert request["content"] == b"x"
    assert call.attempts == 1


def test_a_short_total_budget_caps_every_phase_and_the_server_deadline() -> None:
    clock = FakeClock()
    call = settings(clock).call(PREDICT, 2.0, None)  # the per-call timeout overrides the client's
    clock.advance(0.5)

    request = call.begin()

    assert request["headers"][TIMEOUT_HEADER] == "1500"
    assert request["timeout"] == httpx.Timeout(connect=1.5, read=1.5, write=1.5, pool=1.5)


def test_no_deadline_header_on_requests_that_do_no_inference() -> None:
    request = settings(FakeClock()).call(RequestSpec("GET", "/v1/models"), None, None).begin()

    assert TIMEOUT_HEADER not in request["headers"]
    assert "X-Request-ID" not in request["headers"]


def test_a_success_is_the_answer_and_tells_the_breaker() -> None:
    breaker = CircuitBreaker(failure_threshold=2)
    breaker.record_failure(breaker.acquire())
    call = settings(FakeClock(), breaker=breaker).call(PREDICT, None, None)
    call.begin()

    assert call.answered(response(200, {"model": "m"})) is None
    assert breaker.consecutive_failures == 0


def test_503_is_retried_after_retry_after_then_raised_with_the_servers_fields() -> None:
    call = settings(FakeClock(), attempts=2).call(PREDICT, None, None)
    busy = response(503, headers={"Retry-After": "1"})

    call.begin()
    assert call.answered(busy) == pytest.approx(1.05)  # Retry-After plus half the base delay
    call.begin()
    with pytest.raises(Overloaded) as caught:
        call.answered(busy)

    error = caught.value
    assert (error.status, error.code, error.message, error.request_id) == (
        503,
        "code_503",
        "message 503",
        "rid",
    )
    assert error.retry_after == 1.0
    assert str(error) == "503 code_503: message 503"


def test_429_with_an_http_date_is_retried_and_is_no_verdict_on_the_servers_health() -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    call = settings(FakeClock(), breaker=breaker).call(PREDICT, None, None)
    call.begin()

    delay = call.answered(response(429, headers={"Retry-After": "Thu, 01 Jan 1970 00:00:02 GMT"}))

    assert delay == pytest.approx(2.05)
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0


def test_a_retry_after_longer_than_the_policy_allows_is_not_waited_for() -> None:
    call = settings(FakeClock()).call(PREDICT, None, None)
    call.begin()

    with pytest.raises(Overloaded) as caught:
        call.answered(response(503, headers={"Retry-After": "3600"}))
    assert caught.value.retry_after == 3600.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadInput),
        (401, Unauthorized),
        (404, NotFound),
        (413, BadInput),
        (415, BadInput),
        (422, BadInput),
    ],
)
def test_input_errors_are_never_retried_and_count_as_a_healthy_server(status: int, kind: type) -> None:
    breaker = CircuitBreaker(failure_threshold=2)
    breaker.record_failure(breaker.acquire())
    call = settings(FakeClock(), breaker=breaker).call(PREDICT, None, None)
    call.begin()

    with pytest.raises(kind) as caught:
        call.answered(response(status))

    assert caught.value.status == status
    assert call.attempts == 1
    assert breaker.consecutive_failures == 0


@pytest.mark.parametrize("status", [500, 502, 504])
def test_server_errors_count_against_the_breaker_and_are_not_retried_by_default(status: int) -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    call = settings(FakeClock(), breaker=breaker).call(PREDICT, None, None)
    call.begin()

    with pytest.raises(ServerError):
        call.answered(response(status))

    assert breaker.state == "open"


@pytest.mark.parametrize("status", [502, 504])
def test_gateway_errors_are_retried_when_asked(status: int) -> None:
    call = settings(FakeClock(), gateway=True).call(PREDICT, None, None)
    call.begin()

    assert call.answered(response(status)) == pytest.approx(0.05)


def test_a_refused_connection_is_retried_with_backoff_then_raised() -> None:
    call = settings(FakeClock(), attempts=2).call(PREDICT, None, None)
    refused = httpx.ConnectError("[Errno 111] Connection refused")

    call.begin()
    assert call.failed(refused) == pytest.approx(0.05)
    call.begin()
    with pytest.raises(ConnectError) as caught:
        call.failed(refused)

    assert caught.value.status is None
    assert caught.value.code == "connect_error"
    assert "Connection refused" in caught.value.message
    assert caught.value.__cause__ is refused


def test_a_connect_timeout_is_retried_but_a_read_timeout_is_not() -> None:
    call = settings(FakeClock()).call(PREDICT, None, None)
    call.begin()
    assert call.failed(httpx.ConnectTimeout("slow")) is not None
    call.begin()

    with pytest.raises(Timeout) as caught:
        call.failed(httpx.ReadTimeout("slow"))

    assert caught.value.code == "read_timeout"  # the server may still be working on it
    assert call.attempts == 2


def test_a_connection_lost_mid_answer_is_not_retried_unless_the_request_is_idempotent() -> None:
    # PREDICT is not marked idempotent; the client's own requests are (see test_lost_connections)
    call = settings(FakeClock()).call(PREDICT, None, None)
    call.begin()

    with pytest.raises(ConnectError, match="RemoteProtocolError"):
        call.failed(httpx.RemoteProtocolError("Server disconnected without sending a response."))


def test_a_wait_that_would_outlast_the_total_budget_raises_the_last_error_instead() -> None:
    clock = FakeClock()
    call = settings(clock, attempts=10).call(PREDICT, 1.0, None)
    call.begin()

    with pytest.raises(Overloaded):
        call.answered(response(503, headers={"Retry-After": "1"}))


def test_an_attempt_after_the_budget_ran_out_is_a_timeout_chained_to_the_last_error() -> None:
    clock = FakeClock()
    call = settings(clock, attempts=10).call(PREDICT, 1.0, None)
    call.begin()
    delay = call.failed(httpx.ConnectError("refused"))
    clock.advance(delay + 1.0)

    with pytest.raises(Timeout) as caught:
        call.begin()

    assert caught.value.code == "timeout"
    assert isinstance(caught.value.__cause__, ConnectError)


def test_an_open_breaker_refuses_the_next_attempt_of_a_retrying_call() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=30.0)
    call = settings(FakeClock(), breaker=breaker).call(PREDICT, None, None)
    call.begin()
    call.failed(httpx.ConnectError("refused"))

    with pytest.raises(CircuitOpen) as caught:
        call.begin()

    assert isinstance(caught.value.__cause__, ConnectError)


def test_the_health_probes_bypass_the_breaker() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=30.0)
    breaker.record_failure(breaker.acquire())

    request = settings(FakeClock(), breaker=breaker).call(
        RequestSpec("GET", "/health", guarded=False), None, None
    )

    assert request.begin()["url"] == "/health"


def test_an_abandoned_probe_frees_the_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=1.0, clock=clock)
    breaker.record_failure(breaker.acquire())
    clock.advance(1.0)
    call = settings(clock, breaker=breaker).call(PREDICT, None, None)
    call.begin()  # takes the probe

    call.abandon()

    assert breaker.acquire().probe


def test_a_non_json_error_body_still_gives_a_typed_error() -> None:
    page = httpx.Response(
        502, text="<html>Bad Gateway</html>", request=REQUEST, headers={"x-request-id": "h"}
    )

    error = error_from_response(page)

    assert isinstance(error, ServerError)
    assert error.code == "http_502"
    assert error.message == "Bad Gateway: <html>Bad Gateway</html>"
    assert error.request_id == "h"


@pytest.mark.parametrize("body", [[1, 2], {"error": "flat"}, {"error": {"type": 3, "message": None}}])
def test_an_error_body_of_another_shape_falls_back_to_the_status(body: Any) -> None:
    error = error_from_response(httpx.Response(418, json=body, request=REQUEST))

    assert isinstance(error, BadInput)
    assert error.code == "http_418"
    assert error.to_dict()["status"] == 418


def test_an_unfollowed_redirect_is_an_invalid_response() -> None:
    error = error_from_response(httpx.Response(302, request=REQUEST))

    assert isinstance(error, InvalidResponse)
    assert error.message == "Found"


def test_predict_request_uses_the_raw_body_or_json_with_labels() -> None:
    raw = predict_request(b"\xff\xd8jpeg", model=None, top_k=3, labels=None)
    assert (raw.path, raw.params, raw.content) == ("/predict", {"top_k": 3}, b"\xff\xd8jpeg")
    assert raw.headers["Content-Type"] == "application/octet-stream"

    zero_shot = predict_request(b"\xff\xd8jpeg", model="clip/vit b", top_k=None, labels=("a cat", "a dog"))
    assert zero_shot.path == "/v1/models/clip%2Fvit%20b/predict"
    assert zero_shot.params is None
    assert zero_shot.content == b'{"image":"/9hqcGVn","labels":["a cat","a dog"]}'
    assert zero_shot.headers["Content-Type"] == "application/json"
