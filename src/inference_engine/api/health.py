"""Operational routes: liveness, readiness, metrics, server info, model listing."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from inference_engine import __version__
from inference_engine.answers import ModelMetadata, ModelStatus, TensorSpec
from inference_engine.errors import ModelNotReady
from inference_engine.metrics import Metrics
from inference_engine.service import InferenceService
from inference_engine.settings import Settings


def model_summary(status: ModelStatus) -> dict[str, Any]:
    """A model's state as ``/v1/models`` and ``/info`` show it (configuration once validated)."""
    summary: dict[str, Any] = {"name": status.name, "state": status.state, "ready": status.ready}
    if status.error:
        summary["error"] = status.error
    if status.version_policy is not None:
        summary["version_policy"] = status.version_policy
    if status.versions:
        summary["versions"] = [
            {"version": v.version, "state": v.state, "ready": v.ready, "traffic": round(v.traffic, 6),
             "shadow": round(v.shadow, 6), **({"reason": v.reason} if v.reason else {})}
            for v in status.versions
        ]  # fmt: skip
    if status.batching is None:
        return summary
    summary.update(
        version=status.version,
        handler=status.handler,
        device=status.device,
        dtype=status.dtype,
        instances=status.instances,
        batching=dict(status.batching),
        labels_count=status.labels_count,
        load_seconds=status.load_seconds,
        warmup_seconds=status.warmup_seconds,
    )
    return summary


def tensor(spec: TensorSpec, *, described: bool = True) -> dict[str, Any]:
    """One input or output as the model pages show it (V2's metadata has no ``format``)."""
    shown: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
    if described and spec.format is not None:
        shown["format"] = spec.format
    return shown


def metadata_page(meta: ModelMetadata) -> dict[str, Any]:
    """``GET /v1/models/{name}``'s ``metadata``: inputs, outputs, tasks and handler facts."""
    return {
        "inputs": [tensor(t) for t in meta.inputs],
        "outputs": [tensor(t) for t in meta.outputs],
        "input_size": list(meta.input_size),
        "labels_count": meta.labels_count,
        "tasks": sorted(meta.tasks),
        **meta.extra,
    }


def build_router(service: InferenceService, settings: Settings, metrics: Metrics) -> APIRouter:
    router = APIRouter(tags=["operations"])
    started = int(time.time())

    @router.get(
        "/health",
        summary="Liveness: the process serves HTTP and can still recover its models",
        response_model=dict[str, str],
        responses={
            503: {"description": "A model failed to reload too many times in a row: replace the process"}
        },
    )
    async def health() -> JSONResponse:
        reason = service.liveness()
        if reason is not None:
            return JSONResponse({"status": "unhealthy", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    @router.get(
        "/ready",
        summary="Readiness: every configured model is loaded and its batch loop runs",
        responses={503: {"description": "Not ready; the body names what is not ready and why"}},
    )
    async def ready() -> JSONResponse:
        readiness = service.readiness()
        models = readiness.models
        if readiness.draining:
            body = {"status": "shutting_down", "models": {name: "shutting down" for name in models}}
            return JSONResponse(body, status_code=503)
        if not models:
            return JSONResponse({"status": "not_ready", "models": {}, "reason": "no models"}, status_code=503)
        # Each served version's state (a model is ready when all of its versions are).
        versions = {
            s.name: {v.version: "ready" if v.ready else v.reason or v.state for v in s.versions}
            for s in service.models_status()
            if s.versions
        }
        if not readiness.ready:
            body = {"status": "not_ready", "models": readiness.not_ready, "versions": versions}
            return JSONResponse(body, status_code=503)
        return JSONResponse(
            {"status": "ready", "models": {name: "ready" for name in models}, "versions": versions}
        )

    @router.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics_text() -> Response:
        service.refresh_gauges()
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/info", summary="Server version, models and a configuration summary")
    async def info() -> dict[str, Any]:
        return {
            "name": "inference-engine",
            "version": __version__,
            "env": settings.env,
            "default_model": service.default_model,
            "models": [model_summary(status) for status in service.models_status()],
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
        statuses = service.models_status()
        return {
            "models": [model_summary(status) for status in statuses],
            # OpenAI's shape, so its clients can list what they may ask for.
            "object": "list",
            "data": [
                {"id": status.name, "object": "model", "created": started, "owned_by": "inference-engine"}
                for status in statuses
            ],
        }

    @router.get("/v1/models/{name}", summary="One model: configuration, state, inputs and outputs")
    async def model_detail(name: str) -> dict[str, Any]:
        status = service.model_status(name)
        if status.state in ("failed", "unloaded"):
            raise ModelNotReady(f"model {name} is not ready: {status.reason}")
        summary = model_summary(status)
        meta = service.model_metadata(name)
        if meta.loaded:
            summary["metadata"] = metadata_page(meta)
        return summary

    return router
