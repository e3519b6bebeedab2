"""Tracing: a request span with decode, queue-wait and inference children; batch spans linked."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from inference_engine.errors import ConfigError
from inference_engine.logging import RequestIdFilter
from inference_engine.metrics import Metrics
from inference_engine.server import build_app
from inference_engine.settings import Settings, TracingSettings
from inference_engine.tracing import build_tracer_provider, current_trace_id, get_tracer
from tests.helpers import encode, in_process_client
from tests.repository import add_colour_model

GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter]]:
    add_colour_model(tmp_path, "colour")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = build_app(Settings(model_repository=tmp_path), Metrics(), tracer_provider=provider)
    async with in_process_client(app) as client:
        yield client, exporter


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_a_request_is_one_trace_with_decode_queue_and_inference(
    traced: tuple[httpx.AsyncClient, InMemorySpanExporter],
) -> None:
    client, exporter = traced
    exporter.clear()
    assert (await client.post("/predict", content=GREEN)).status_code == 200
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind.name == "SERVER"]
    assert len(server) == 1
    trace_id = server[0].context.trace_id
    for name in ("decode", "queue_wait", "inference"):
        (span,) = by_name(spans, name)
        assert span.context.trace_id == trace_id, name
    queue_wait, inference = by_name(spans, "queue_wait")[0], by_name(spans, "inference")[0]
    assert queue_wait.end_time == inference.start_time
    assert inference.attributes is not None
    assert inference.attributes["inference_engine.batch.size"] == 1
    (batch,) = by_name(spans, "batch")
    assert batch.context.trace_id != trace_id  # a batch serves many traces: linked, not parented
    assert [link.context.trace_id for link in batch.links] == [trace_id]


async def test_requests_sharing_a_batch_are_all_linked(
    traced: tuple[httpx.AsyncClient, InMemorySpanExporter],
) -> None:
    import asyncio

    client, exporter = traced
    exporter.clear()
    responses = await asyncio.gather(*(client.post("/predict", content=GREEN) for _ in range(6)))
    assert all(r.status_code == 200 for r in responses)
    spans = exporter.get_finished_spans()
    request_traces = {s.context.trace_id for s in spans if s.kind.name == "SERVER"}
    linked = {link.context.trace_id for s in by_name(spans, "batch") for link in s.links}
    assert linked == request_traces
    assert len(request_traces) == 6


def test_log_lines_carry_the_trace_id() -> None:
    provider = TracerProvider()
    tracer = get_tracer(provider)
    record = logging.makeLogRecord({"msg": "x"})
    with tracer.start_as_current_span("outer") as span:
        RequestIdFilter().filter(record)
        expected = format(span.get_span_context().trace_id, "032x")
    assert record.trace_id == expected
    outside = logging.makeLogRecord({"msg": "y"})
    RequestIdFilter().filter(outside)
    assert not hasattr(outside, "trace_id")
    assert current_trace_id() is None


def test_providers_follow_the_settings() -> None:
    assert build_tracer_provider(TracingSettings()) is None
    provider = build_tracer_provider(TracingSettings(enabled=True, exporter="console", service_name="svc"))
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "svc"
    provider.shutdown()
    otlp = build_tracer_provider(TracingSettings(enabled=True, exporter="otlp"))
    assert otlp is not None
    otlp.shutdown()


def test_a_missing_sdk_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_sdk(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("opentelemetry.sdk"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_sdk)
    with pytest.raises(ConfigError, match=r"inference-engine\[tracing\]"):
        build_tracer_provider(TracingSettings(enabled=True))
