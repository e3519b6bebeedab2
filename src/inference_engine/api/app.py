"""Build the FastAPI application around an :class:`InferenceService`.

Nothing global: ``create_app`` takes the objects built at start-up, and the lifespan loads the
models in the background (so ``/health`` answers at once and ``/ready`` tracks loading) and
drains and unloads them at shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Protocol

from fastapi import FastAPI

from inference_engine import __version__
from inference_engine.access import AccessPolicy
from inference_engine.api import embeddings, health, playground, repository, routes, v2
from inference_engine.api.access import AccessControlMiddleware
from inference_engine.api.errors import install_error_handlers
from inference_engine.api.middleware import RequestContextMiddleware
from inference_engine.fetch import ImageFetcher
from inference_engine.metrics import Metrics
from inference_engine.service import InferenceService
from inference_engine.settings import Settings
from inference_engine.watchdog import Watchdog

if TYPE_CHECKING:  # the SDK is an optional extra
    from opentelemetry.sdk.trace import TracerProvider


class Transport(Protocol):
    """Another listener over the same service (gRPC): started once the service runs, stopped
    (its calls drained within ``grace_s``) before the service drains its models."""

    async def start(self) -> None: ...

    async def stop(self, grace_s: float) -> None: ...


def create_app(
    settings: Settings,
    service: InferenceService,
    metrics: Metrics,
    tracer_provider: TracerProvider | None = None,
    *,
    access: AccessPolicy | None = None,
    transports: Sequence[Transport] = (),
    listen_when_loaded: bool = False,
) -> FastAPI:
    """The HTTP application; ``access`` is shared with the ``transports`` (one rate limit per key).

    ``listen_when_loaded``: the start-up (and so the listeners, which open after it) waits until
    every model has loaded: one of several workers on a port takes no connection it would answer
    503 while the others could serve it.
    """
    access = access or AccessPolicy.from_settings(
        settings.auth, settings.rate_limit, metrics, settings.fairness
    )
    fetcher = ImageFetcher(settings.urls) if settings.urls.enabled else None

    watchdog = Watchdog(service, settings.watchdog)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        service.control.start_polling(settings.server.repository_poll_s)
        watchdog.start()
        started: list[Transport] = []
        try:
            if listen_when_loaded:
                await service.wait_loaded()
            for transport in transports:
                await transport.start()
                started.append(transport)
            yield
        finally:
            for transport in started:  # after HTTP's drain: their calls finish on running models
                await transport.stop(service.drain_time_left(settings.server.drain_timeout_s))
            await watchdog.stop()
            await service.stop(settings.server.drain_timeout_s)
            if fetcher is not None:
                await fetcher.aclose()
            await access.aclose()
            if tracer_provider is not None:
                tracer_provider.shutdown()  # flushes spans still batched for export

    app = FastAPI(
        title="inference-engine",
        version=__version__,
        description="Image models behind HTTP with dynamic batching.",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry support makes the request span (with the route and status);
        # it is off unless tracing is configured, so no global provider is ever picked up.
        telemetry=(
            {"tracer_provider": tracer_provider, "metrics": False, "logs": False}
            if tracer_provider is not None
            else {"tracing": False, "metrics": False, "logs": False}
        ),
    )
    app.state.service = service
    app.state.metrics = metrics
    metrics.build_info.labels(__version__).set(1)
    install_error_handlers(app)
    # Routes are matched in this order, one by one, on every request: inference first.
    app.include_router(routes.build_router(service, settings, fetcher))
    v2_router = v2.build_router(service, settings)
    app.include_router(v2_router)
    app.include_router(embeddings.build_router(service, settings))
    app.include_router(health.build_router(service, settings, metrics))
    control_router = repository.build_router(service, settings)
    app.include_router(control_router)
    # Added first, so it runs inside the request-context middleware (request ids on its errors).
    app.add_middleware(AccessControlMiddleware, policy=access)
    if settings.server.playground:  # the static page loads without a key; its API calls need one
        app.add_middleware(playground.PublicPlaygroundMiddleware)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        access_log=settings.logging.access_log,
        v2_routes=[*v2_router.routes, *control_router.routes],
    )
    return app
