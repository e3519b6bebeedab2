"""Log set-up: JSON lines and text lines on stderr, request ids and extra fields."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from contextvars import copy_context
from pathlib import Path
from typing import Any

import pytest

from inference_engine.logging import RequestContext, configure_logging, current_request
from inference_engine.settings import LoggingSettings

LOGGER_NAME = "inference_engine.tests.logging_probe"
TOUCHED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging rewires the root logger; put everything back for the tests that follow."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved = {
        name: (lg.handlers[:], lg.level, lg.propagate, lg.disabled)
        for name in TOUCHED_LOGGERS
        if isinstance(lg := logging.Logger.manager.loggerDict.get(name), logging.Logger)
    }
    token = current_request.set(None)
    try:
        yield
    finally:
        current_request.reset(token)
        logging.captureWarnings(False)
        for handler in root.handlers:
            if handler not in saved_root[0]:
                handler.close()
        root.handlers[:] = saved_root[0]
        root.setLevel(saved_root[1])
        for name in TOUCHED_LOGGERS:
            logger = logging.getLogger(name)
            if name in saved:
                handlers, level, propagate, disabled = saved[name]
                logger.handlers[:] = handlers
                logger.setLevel(level)
                logger.propagate = propagate
                logger.disabled = disabled
            else:
                logger.handlers.clear()
                logger.setLevel(logging.NOTSET)
                logger.propagate = True


def json_lines(err: str) -> list[dict[str, Any]]:
    lines = [line for line in err.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def configure(fmt: str, level: str = "INFO") -> logging.Logger:
    configure_logging(LoggingSettings(format=fmt, level=level))  # type: ignore[arg-type]
    return logging.getLogger(LOGGER_NAME)


# --- JSON ------------------------------------------------------------------------------------


def test_python_warnings_become_json_records(capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    logging.captureWarnings(False)  # another test's server may have left it on, under pytest's own
    configure("json")
    # What the warnings module calls to show a warning that passed its filters.
    warnings.showwarning("a library said something", UserWarning, __file__, 1)
    (record,) = json_lines(capsys.readouterr().err)
    assert record["level"] == "WARNING" and record["logger"] == "py.warnings"
    assert "a library said something" in record["message"]


def test_json_line_has_the_standard_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure("json")

    logger.info("hello %s", "world")
    records = json_lines(capsys.readouterr().err)

    assert len(records) == 1
    record = records[0]
    assert set(record) == {"ts", "level", "logger", "message", "request_id"}
    assert record["level"] == "INFO"
    assert record["logger"] == LOGGER_NAME
    assert record["message"] == "hello world"
    assert record["request_id"] == "-"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])


def test_json_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure("json")

    logger.info("first")
    logger.warning("second\nwith a newline")
    logger.error("third")
    lines = capsys.readouterr().err.splitlines()

    assert [json.loads(line)["message"] for line in lines] == ["first", "second\nwith a newline", "third"]
    assert [json.loads(line)["level"] for line in lines] == ["INFO", "WARNING", "ERROR"]


def test_json_request_id_inside_a_request(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure("json")

    logger.info("before")
    token = current_request.set(RequestContext("abc"))
    try:
        logger.info("during")
    finally:
        current_request.reset(token)
    logger.info("after")
    records = json_lines(capsys.readouterr().err)

    assert [(r["message"], r["request_id"]) for r in records] == [
        ("before", "-"),
        ("during", "abc"),
        ("after", "-"),
    ]


def test_json_request_id_in_a_thread_that_copied_the_context(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure("json")
    token = current_request.set(RequestContext("req-7"))
    try:
        context = copy_context()
    finally:
        current_request.reset(token)

    thread = threading.Thread(target=context.run, args=(logger.info, "from a worker"))
    thread.start()
    thread.join()
    records = json_lines(capsys.readouterr().err)

    assert records[0]["message"] == "from a worker"
    assert records[0]["request_id"] == "req-7"


def test_json_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure("json")

    logger.info("done", extra={"model": "m1", "batch_size": 4, "duration_ms": 1.5, "path": Path("/a/b")})
    record = json_lines(capsys.readouterr().err)[0]

    assert record["model"] == "m1"
    assert record["batch_size"] == 4
    assert record["duration_ms"] == 1.5
    assert record["path"] == "/a/b"  # not JSON-native: written with str()


def test_json_explicit_request_id_wins(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure("json")
    token = current_request.set(RequestContext("from-context"))
    try:
        logger.info("explicit", extra={"request_id": "given"})
    finally:
        current_request.reset(token)

    record = json_lines(capsys.readouterr().err)[0]

    assert record["request_id"] == "given"


def test_json_exception_info(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure("json")

    try:
        raise ValueError("bad thing")
    except ValueError:
        logger.exception("failed")
    record = json_lines(capsys.readouterr().err)[0]

    assert record["level"] == "ERROR"
    assert record["message"] == "failed"
    assert record["exc_info"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad thing" in record["exc_info"]


def test_json_drops_uvicorn_colour_duplicate(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure("json")

    logger.info("started", extra={"color_message": "\x1b[32mstarted\x1b[0m"})
    record = json_lines(capsys.readouterr().err)[0]

    assert "color_message" not in record


# --- levels ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("DEBUG", ["debug", "info", "warning", "error"]),
        ("INFO", ["info", "warning", "error"]),
        ("WARNING", ["warning", "error"]),
        ("ERROR", ["error"]),
    ],
)
def test_level_filters(capsys: pytest.CaptureFixture[str], level: str, expected: list[str]) -> None:
    logger = configure("json", level)

    logger.debug("debug")
    logger.info("info")
    logger.warning("warning")
    logger.error("error")

    assert [r["message"] for r in json_lines(capsys.readouterr().err)] == expected


def test_uvicorn_access_logger_is_silenced_and_uvicorn_error_propagates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("json")

    logging.getLogger("uvicorn.access").info("GET / 200")
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    records = json_lines(capsys.readouterr().err)

    assert [(r["logger"], r["message"]) for r in records] == [
        ("uvicorn.error", "Application startup complete.")
    ]


def test_reconfiguring_replaces_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure("text")
    logger = configure("json")

    logger.info("once")
    err = capsys.readouterr().err

    assert len(err.splitlines()) == 1
    assert json.loads(err)["message"] == "once"


# --- text ------------------------------------------------------------------------------------


def test_text_line(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure("text")

    token = current_request.set(RequestContext("abc"))
    try:
        logger.warning("served", extra={"model": "m1", "status": 200, "color_message": "\x1b[1mserved"})
    finally:
        current_request.reset(token)
    logger.info("idle")
    lines = capsys.readouterr().err.splitlines()

    assert len(lines) == 2
    served, idle = lines
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING ", served)
    assert f" {LOGGER_NAME} [abc] served" in served
    assert served.endswith(" model=m1 status=200")
    assert "color_message" not in served
    assert "\x1b" not in served
    assert f"INFO    {LOGGER_NAME} [-] idle" in idle
    assert "=" not in idle.split(" idle", 1)[1]


def test_text_exception_info(capsys: pytest.CaptureFixture[str]) -> None:
    logger = configure("text")

    try:
        raise KeyError("missing")
    except KeyError:
        logger.exception("lookup failed")
    err = capsys.readouterr().err

    assert "lookup failed" in err
    assert "Traceback (most recent call last):" in err
    assert "KeyError: 'missing'" in err
