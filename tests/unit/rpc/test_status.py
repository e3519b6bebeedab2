"""Engine errors -> gRPC codes and trailing metadata: one table, as REST's is."""

from __future__ import annotations

import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import StatusCode

from inference_engine import errors
from inference_engine.rpc.status import error_metadata, http_status, status_code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.BadRequest("x"), StatusCode.INVALID_ARGUMENT),
        (errors.InvalidInput("x"), StatusCode.INVALID_ARGUMENT),
        (errors.UnsupportedMediaType("x"), StatusCode.INVALID_ARGUMENT),
        (errors.ImageTooLarge("x"), StatusCode.INVALID_ARGUMENT),
        (errors.Unauthorized("x"), StatusCode.UNAUTHENTICATED),
        (errors.Forbidden("x"), StatusCode.PERMISSION_DENIED),
        (errors.ModelNotFound("x"), StatusCode.NOT_FOUND),
        (errors.PayloadTooLarge("x"), StatusCode.RESOURCE_EXHAUSTED),
        (errors.RateLimited("x", retry_after_s=1), StatusCode.RESOURCE_EXHAUSTED),
        (errors.QueueFull("x"), StatusCode.UNAVAILABLE),
        (errors.ModelNotReady("x"), StatusCode.UNAVAILABLE),
        (errors.ShuttingDown("x"), StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("x"), StatusCode.DEADLINE_EXCEEDED),
        (errors.ClientDisconnected("x"), StatusCode.CANCELLED),
        (errors.ModelFailed("x"), StatusCode.INTERNAL),
        (errors.LoadFailed("x"), StatusCode.INVALID_ARGUMENT),
        (errors.EngineError("x"), StatusCode.INTERNAL),
    ],
)
def test_each_error_has_its_code(error: errors.EngineError, code: StatusCode) -> None:
    assert status_code(error) is code


def test_calls_ended_without_an_error_count_as_rest_would() -> None:
    assert (http_status(StatusCode.OK), http_status(StatusCode.CANCELLED)) == (200, 499)
    assert http_status(StatusCode.DEADLINE_EXCEEDED) == 504
    assert http_status(StatusCode.UNKNOWN) == 500


def test_retry_hints_in_three_forms() -> None:
    metadata = dict(error_metadata(errors.QueueFull("full", retry_after_s=2.5)))
    assert metadata["retry-after"] == "3"
    assert metadata["grpc-retry-pushback-ms"] == "3000"
    status = status_pb2.Status.FromString(metadata["grpc-status-details-bin"])
    assert (status.code, status.message) == (StatusCode.UNAVAILABLE.value[0], "full")
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.retry_delay.seconds == 3


def test_rate_limit_figures_travel_and_no_http_only_header() -> None:
    limited = errors.RateLimited("slow down", retry_after_s=1, headers={"X-RateLimit-Limit": "5"})
    assert dict(error_metadata(limited))["x-ratelimit-limit"] == "5"
    assert error_metadata(errors.Unauthorized("no key")) == ()  # WWW-Authenticate is HTTP's
