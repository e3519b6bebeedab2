"""Operational routes: liveness, readiness, metrics, server info, model listing."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from inference_engine import __version__
from inference_engine.errors import ModelNotReady
from inference_engine.metrics import Metrics
from inference_engine.service import InferenceService, ModelRuntime
from inference_engine.settings import Settings


def _model_summary(runtime: ModelRuntime) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "name": runtime.name,
        "state": runtime.state.value,
        "ready": runtime.ready,
    }
    if runtime.error:
        summary["error"] = runtime.error
    if runtime.spec is None:
        return summary
    config = runtime.spec.config
    summary.update(
        version=config.version,
        handler=config.handler,
        device=config.device,
        dtype=config.dtype,
        instances=config.instances,
        batching={
            "max_batch_size": config.max_batch_size,
            "max_batch_delay_ms": config.max_batch_delay_ms,
            "max_queue_size": config.max_queue_size,
        },
        labels_count=len(runtime.handlers[0].labels()) if runtime.handlers else None,
        load_seconds=runtime.load_seconds,
        warmup_seconds=runtime.warmup_seconds,
    )
    return summary


def build_router(service: InferenceService, settings: Settings, metrics: Metrics) -> APIRouter:
    router = APIRouter(tags=["operations"])
    started = int(time.time())

    @router.get("/health", summary="Liveness: the process serves HTTP")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/ready",
        summary="Readiness: every configured model is loaded and its batch loop runs",
        responses={503: {"description": "Not ready; the body names what is not ready and why"}},
    )
    async def ready() -> JSONResponse:
        models = service.readiness()
        if service.draining:
            body = {"status": "shutting_down", "models": {name: "shutting down" for name in models}}
            return JSONResponse(body, status_code=503)
        not_ready = {name: reason for name, reason in models.items() if reason is not None}
        if not models:
            return JSONResponse({"status": "not_ready", "models": {}, "reason": "no models"}, status_code=503)
        if not_ready:
            return JSONResponse({"status": "not_ready", "models": not_ready}, status_code=503)
        return JSONResponse({"status": "ready", "models": {name: "ready" for name in models}})

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics_text() -> Response:
        for runtime in service.runtimes.values():
            metrics.model_ready.labels(runtime.name).set(1 if runtime.ready else 0)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/info", summary="Server version, models and a configuration summary")
    async def info() -> dict[str, Any]:
        return {
            "name": "inference-engine",
            "version": __version__,
            "env": settings.env,
            "default_model": service.default_model,
            "models": [_model_summary(r) for _, r in sorted(service.runtimes.items())],
            "config": {
                "model_repository": str(settings.model_repository),
                "server": settings.server.model_dump(mode="json", exclude={"host", "port"}),
                "batching": settings.batching.model_dump(mode="json"),
                "images": settings.images.model_dump(mode="json"),
                "logging": settings.logging.model_dump(mode="json"),
            },
        }

    @router.get("/v1/models", summary="Served models and their state (also in OpenAI's list shape)")
    async def list_models() -> dict[str, Any]:
        runtimes = sorted(service.runtimes.items())
        return {
            "models": [_model_summary(r) for _, r in runtimes],
            # OpenAI's shape, so its clients can list what they may ask for.
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": started, "owned_by": "inference-engine"}
                for name, _ in runtimes
            ],
        }

    @router.get("/v1/models/{name}", summary="One model: configuration, state, inputs and outputs")
    async def model_detail(name: str) -> dict[str, Any]:
        runtime = service.runtime(name)
        summary = _model_summary(runtime)
        if runtime.handlers:
            summary["metadata"] = runtime.handlers[0].metadata()
        elif runtime.state.value == "failed":
            raise ModelNotReady(f"model {name} is not ready: {runtime.not_ready_reason()}")
        return summary

    return router
