"""Assemble the server from settings and run it under uvicorn.

This is the one place where start-up objects are built (metrics, model specs, the service, the
app) and handed to each other; nothing is created at import time.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from inference_engine import __version__
from inference_engine.access import AccessPolicy
from inference_engine.api import create_app
from inference_engine.api.app import Transport
from inference_engine.control import ModelRepository
from inference_engine.drain import CloseWhileDraining, DrainingServer
from inference_engine.errors import ConfigError
from inference_engine.gpumetrics import watch_cuda
from inference_engine.logging import configure_logging
from inference_engine.metrics import Metrics
from inference_engine.models.loader import ModelSpec, scan_repository
from inference_engine.protocol import bounded_http_protocol
from inference_engine.rpc.server import GrpcTransport
from inference_engine.service import InferenceService, TextLimits
from inference_engine.settings import Settings
from inference_engine.tracing import build_tracer_provider, get_tracer

if TYPE_CHECKING:  # the SDK is an optional extra
    from opentelemetry.sdk.trace import TracerProvider

    from inference_engine.workers import WorkerSlot

logger = logging.getLogger("inference_engine.server")


def check_settings(settings: Settings) -> None:
    """Refuse settings that validate one by one but cannot work together."""
    if settings.auth.enabled and not (settings.auth.api_key_hashes or settings.fairness.key_hashes()):
        raise ConfigError(
            "invalid configuration:\n  auth.enabled is true but auth.api_key_hashes is empty (and no "
            "fairness tenant names a key), so no request could be served; set "
            "IE_AUTH__API_KEY_HASHES='[\"<sha256>\"]' (inference-engine auth hash-key KEY prints one) "
            "or IE_AUTH__ENABLED=false"
        )
    server = settings.server
    if server.shutdown_delay_s > server.drain_timeout_s:
        raise ConfigError(
            f"invalid configuration:\n  server.shutdown_delay_s ({server.shutdown_delay_s:g}) exceeds "
            f"server.drain_timeout_s ({server.drain_timeout_s:g}); the delay is the first part of the "
            "drain, which counts from the signal: lower the delay or raise the drain timeout"
        )


def build_app(
    settings: Settings,
    metrics: Metrics | None = None,
    tracer_provider: TracerProvider | None = None,
    *,
    grpc: bool = False,
    slot: WorkerSlot | None = None,
) -> FastAPI:
    """Validate the model repository and build the app; raises ``ModelLoadError`` if it is unusable.

    ``tracer_provider`` replaces the one ``tracing`` settings would build (tests pass their own).
    ``grpc``: also listen for gRPC when ``grpc.enabled`` (``serve`` asks; an app built in a test
    process serves HTTP only unless the test asks too). ``slot``: this is one of
    ``server.workers`` processes (metrics shared through its folder).
    """
    check_settings(settings)
    if metrics is None:
        metrics = Metrics(shared_dir=slot.metrics_dir if slot is not None else None)
        watch_cuda(metrics.live_registry)  # GPU memory and utilisation, where CUDA is present
    tracer_provider = tracer_provider or build_tracer_provider(settings.tracing)
    specs, broken = scan_repository(settings.model_repository, settings.batching, settings.models or None)
    if not settings.models:
        specs, skipped = split_absent_weights(specs)
        for name, reason in skipped.items():
            logger.warning(
                "model not served: its weights or packages are not on this machine",
                extra={"model": name, "reason": reason},
            )
    service = InferenceService(
        specs,
        broken,
        metrics,
        limits=settings.images,
        text_limits=TextLimits(
            max_items=settings.server.max_items_per_request,
            max_labels=settings.server.max_labels_per_request,
            max_chars=settings.server.max_text_chars,
        ),
        preprocess_workers=settings.server.preprocess_workers,
        default_model=settings.server.default_model,
        tracer=get_tracer(tracer_provider),
        shared_work_timeout_s=settings.server.max_request_timeout_s,
        recovery_limit=settings.watchdog.max_failed_recoveries if settings.watchdog.enabled else 0,
        repository=ModelRepository(
            settings.model_repository, settings.batching, settings.server.drain_timeout_s
        ),
        shadow_max_in_flight=settings.server.shadow_max_in_flight,
    )
    access = AccessPolicy.from_settings(settings.auth, settings.rate_limit, metrics, settings.fairness)
    transports: list[Transport] = []
    if grpc and settings.grpc.enabled:
        transports.append(GrpcTransport(settings, service, metrics, access, share_port=slot is not None))
    return create_app(
        settings,
        service,
        metrics,
        tracer_provider,
        access=access,
        transports=transports,
        listen_when_loaded=slot is not None,
    )


def split_absent_weights(specs: list[ModelSpec]) -> tuple[list[ModelSpec], dict[str, str]]:
    """The models whose weights are here, and why each of the others is left out.

    The default served set is what can serve on this machine; asking for a model by name
    (``--model``, ``IE_MODELS``) loads it regardless, so its absence is reported as a failure.
    """
    present: list[ModelSpec] = []
    skipped: dict[str, str] = {}
    for spec in specs:
        reason = spec.handler_class.weights_missing(spec.config, spec.directory)
        if reason is None:
            present.append(spec)
        else:
            skipped[spec.name] = reason
    return present, skipped


def set_torch_threads(threads: int) -> None:
    """``torch_threads``: torch's intra-op pool; nothing to size where torch is not installed."""
    try:
        import torch
    except ImportError:
        logger.info("torch_threads ignored: torch is not installed", extra={"torch_threads": threads})
        return
    torch.set_num_threads(threads)


def serve(settings: Settings, slot: WorkerSlot | None = None) -> int:
    """Run until SIGINT/SIGTERM; models load in the background while ``/health`` answers.

    With ``server.workers`` above 1 this process supervises that many servers (``slot``: this is
    one of them, listening beside the others).
    """
    configure_logging(settings.logging, worker=slot.index if slot is not None else None)
    if settings.server.workers > 1 and slot is None:
        from inference_engine.workers import supervise

        check_settings(settings)  # before any worker starts: one error, not N
        return supervise(settings)
    if settings.torch_threads:
        set_torch_threads(settings.torch_threads)
    app = build_app(settings, grpc=True, slot=slot)
    service: InferenceService = app.state.service
    logger.info(
        "starting inference-engine",
        extra={"version": __version__, "env": settings.env, "host": settings.server.host,
               "port": settings.server.port, "model_repository": str(settings.model_repository),
               "grpc_port": settings.grpc.port if settings.grpc.enabled else None},
    )  # fmt: skip
    config = uvicorn.Config(
        CloseWhileDraining(app, service),
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        server_header=False,
        http=bounded_http_protocol(
            header_timeout_s=settings.server.header_timeout_s,
            send_timeout_s=settings.server.send_timeout_s,
        ),
        timeout_keep_alive=settings.server.keep_alive_timeout_s,
        # uvicorn refuses a request when the open connections, its own included, reach the limit:
        # one more than max_connections lets exactly max_connections connections be served.
        limit_concurrency=settings.server.max_connections + 1,
    )
    # uvicorn catches SIGINT/SIGTERM (``_Server`` drains, then runs the lifespan shutdown) and
    # then re-raises the signal to the handler it found. Installing a no-op handler first turns a
    # graceful stop into a normal exit with status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stopped_by_signal)
    server = DrainingServer(
        config,
        service,
        drain_timeout_s=settings.server.drain_timeout_s,
        shutdown_delay_s=settings.server.shutdown_delay_s,
    )
    if slot is None:
        server.run()
    else:  # one of several workers: a listener of its own on the shared port
        from inference_engine.workers import port_socket

        # Bound, not listening: the loop listens once the start-up (the models' load) is done.
        server.run(sockets=[port_socket(settings.server.host, settings.server.port)])
    logger.info("stopped")
    return 0


def _stopped_by_signal(signum: int, frame: FrameType | None) -> None:
    """Swallow the signal uvicorn re-raises after its graceful stop (it was handled already)."""
