"""OpenTelemetry tracing, optional: a span per request, with decode, queue-wait and inference
children, and one span per batch linked to the requests it served.

The OpenTelemetry API is always importable (FastAPI depends on it) and costs nothing without a
provider: every tracer here is then a no-op. The SDK and exporters come with the ``tracing``
extra and are imported only when ``tracing.enabled`` is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import trace

from inference_engine.errors import ConfigError
from inference_engine.settings import TracingSettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

TRACER_NAME = "inference_engine"


def build_tracer_provider(
    settings: TracingSettings, exporter: SpanExporter | None = None
) -> TracerProvider | None:
    """A provider exporting as configured, or ``None`` when tracing is off.

    ``exporter`` replaces the configured one (tests pass an in-memory exporter).
    """
    if not settings.enabled:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise ConfigError(
            "invalid configuration:\n  tracing.enabled is true but the OpenTelemetry SDK is not "
            "installed; pip install 'inference-engine[tracing]'"
        ) from None
    if exporter is None:
        if settings.exporter == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def get_tracer(provider: trace.TracerProvider | None) -> trace.Tracer:
    """The engine's tracer from ``provider``; a no-op tracer when there is none."""
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(TRACER_NAME)


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, for log lines; ``None`` outside a recorded span."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
