"""The engine's exception tree: HTTP status, stable code and headers."""

from __future__ import annotations

import pytest

from inference_engine.errors import (
    BadRequest,
    ClientDisconnected,
    ConfigError,
    DeadlineExceeded,
    EngineError,
    ImageTooLarge,
    ImageTooSmall,
    InvalidInput,
    ModelFailed,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    QueueFull,
    ServiceUnavailable,
    ShuttingDown,
    UnsupportedMediaType,
)

TABLE = [
    (EngineError, 500, "internal_error"),
    (InvalidInput, 422, "invalid_input"),
    (ImageTooLarge, 422, "image_too_large"),
    (ImageTooSmall, 422, "image_too_small"),
    (BadRequest, 400, "bad_request"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (UnsupportedMediaType, 415, "unsupported_media_type"),
    (ModelNotFound, 404, "model_not_found"),
    (ServiceUnavailable, 503, "service_unavailable"),
    (QueueFull, 503, "queue_full"),
    (ModelNotReady, 503, "model_not_ready"),
    (ShuttingDown, 503, "shutting_down"),
    (DeadlineExceeded, 504, "deadline_exceeded"),
    (ModelFailed, 500, "model_failed"),
    (ClientDisconnected, 499, "client_disconnected"),
]
UNAVAILABLE = [ServiceUnavailable, QueueFull, ModelNotReady, ShuttingDown]


@pytest.mark.parametrize(("cls", "status", "code"), TABLE, ids=[row[0].__name__ for row in TABLE])
def test_status_and_code(cls: type[EngineError], status: int, code: str) -> None:
    exc = cls("something went wrong")
    assert isinstance(exc, EngineError)
    assert exc.status_code == status
    assert exc.code == code
    assert exc.message == "something went wrong"
    assert str(exc) == "something went wrong"


def test_codes_are_unique() -> None:
    codes = [code for _, _, code in TABLE]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize("cls", [ImageTooLarge, ImageTooSmall])
def test_image_size_errors_are_invalid_input(cls: type[EngineError]) -> None:
    with pytest.raises(InvalidInput):
        raise cls("bad size")


@pytest.mark.parametrize("cls", [InvalidInput, BadRequest, ModelFailed, DeadlineExceeded])
def test_plain_errors_carry_no_headers_by_default(cls: type[EngineError]) -> None:
    assert cls("x").headers == {}


def test_headers_are_copied() -> None:
    given = {"X-Reason": "test"}
    exc = EngineError("x", headers=given)
    given["X-Reason"] = "changed"
    assert exc.headers == {"X-Reason": "test"}


@pytest.mark.parametrize("cls", UNAVAILABLE)
@pytest.mark.parametrize(
    ("retry_after_s", "header"),
    [(None, "1"), (0.0, "1"), (0.2, "1"), (-5.0, "1"), (1.0, "1"), (2.6, "3"), (30.0, "30")],
)
def test_unavailable_errors_send_an_integer_retry_after(
    cls: type[ServiceUnavailable], retry_after_s: float | None, header: str
) -> None:
    exc = cls("busy") if retry_after_s is None else cls("busy", retry_after_s=retry_after_s)
    assert exc.status_code == 503
    assert exc.headers == {"Retry-After": header}
    assert exc.headers["Retry-After"].isdigit()
    assert int(exc.headers["Retry-After"]) >= 1
    assert exc.retry_after_s == int(header)
    assert isinstance(exc.retry_after_s, int)
    assert exc.message == "busy"


@pytest.mark.parametrize("cls", [ConfigError, ModelLoadError])
def test_start_up_errors_never_reach_clients(cls: type[Exception]) -> None:
    assert not issubclass(cls, EngineError)
    assert str(cls("model folder x")) == "model folder x"
