"""Inference routes: ``POST /v1/models/{name}/predict`` and ``POST /predict`` (default model)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from starlette.types import Receive

from inference_engine.api.payload import read_image_bytes
from inference_engine.errors import BadRequest, ClientDisconnected, DeadlineExceeded, ModelNotFound
from inference_engine.fetch import ImageFetcher
from inference_engine.logging import current_request
from inference_engine.service import InferenceService, Prediction
from inference_engine.settings import Settings

T = TypeVar("T")

_IMAGE_BODY: dict[str, Any] = {
    "parameters": [
        {
            "name": "X-Request-Timeout-Ms",
            "in": "header",
            "required": False,
            "description": "This request's deadline in ms (capped by server.max_request_timeout_s).",
            "schema": {"type": "integer", "minimum": 1},
        }
    ],
    "requestBody": {
        "required": True,
        "description": (
            "An image (JPEG, PNG, WebP, GIF, BMP, TIFF) as the raw body, a multipart 'file', or JSON "
            "with the image as base64 (or a data: URI) in 'image', or its address in 'url' when the "
            "server allows image URLs."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "description": "base64 or data:image/...;base64,..."},
                        "url": {"type": "string", "format": "uri", "maxLength": 2048},
                    },
                    "additionalProperties": False,
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text}
    for code, text in {
        400: "Malformed request",
        404: "Unknown model",
        413: "Body too large",
        415: "Not a supported image",
        422: "Invalid image or parameter",
        503: "Queue full, model not ready, or shutting down (see Retry-After)",
        504: "Deadline exceeded",
    }.items()
}

TopK = Annotated[int | None, Query(ge=1, le=1000, description="How many predictions to return.")]


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(work: Awaitable[T], receive: Receive) -> T:
    """Await ``work``, cancelling it if the client disconnects first (so it costs no forward pass)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server gave up on this request (shutdown timeout)
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected("the client disconnected before the answer was ready")
    return task.result()


TIMEOUT_HEADER = "x-request-timeout-ms"


def _loop_time(monotonic_deadline: float) -> float:
    """Convert a ``time.monotonic()`` deadline to the event loop's clock."""
    return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())


def request_timeout_s(request: Request, settings: Settings) -> float:
    """The client's own deadline from ``X-Request-Timeout-Ms``, capped by configuration."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return settings.server.request_timeout_s
    if not (raw.strip().isascii() and raw.strip().isdecimal()) or int(raw) <= 0:
        raise BadRequest("X-Request-Timeout-Ms must be a positive whole number of milliseconds")
    return min(int(raw) / 1000.0, settings.server.max_request_timeout_s)


def format_prediction(prediction: Prediction, request_id: str, total_s: float) -> dict[str, Any]:
    return {
        "model": prediction.model,
        "model_version": prediction.model_version,
        "request_id": request_id,
        **prediction.body,
        "timings_ms": {
            "preprocess": round(prediction.preprocess_s * 1000, 3),
            "queue": round(prediction.queue_s * 1000, 3),
            "inference": round(prediction.inference_s * 1000, 3),
            "total": round(total_s * 1000, 3),
        },
    }


def build_router(
    service: InferenceService, settings: Settings, fetcher: ImageFetcher | None = None
) -> APIRouter:
    router = APIRouter(tags=["inference"])

    async def predict(name: str, request: Request, top_k: int | None) -> dict[str, Any]:
        ctx = current_request.get()
        assert ctx is not None
        started: float = ctx.extra.get("started", time.monotonic())
        runtime = service.runtime(name)  # 404 before reading a body for an unknown model
        ctx.model = runtime.name  # only known names become metric labels
        deadline = started + request_timeout_s(request, settings)
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                data = await read_image_bytes(request, settings.server.max_body_bytes, fetcher)
        except TimeoutError:
            raise DeadlineExceeded("the image did not arrive within the request deadline") from None
        prediction = await until_disconnect(
            service.infer(
                runtime.name,
                data,
                top_k=top_k,
                deadline=deadline,
                request_id=ctx.request_id,
            ),
            request.receive,
        )
        ctx.batch_size = prediction.batch_size
        return format_prediction(prediction, ctx.request_id, time.monotonic() - started)

    @router.post(
        "/v1/models/{name}/predict",
        summary="Classify an image with the named model",
        openapi_extra=_IMAGE_BODY,
        responses=_ERRORS,
    )
    async def predict_named(name: str, request: Request, top_k: TopK = None) -> dict[str, Any]:
        return await predict(name, request, top_k)

    @router.post(
        "/predict",
        summary="Classify an image with the default model",
        openapi_extra=_IMAGE_BODY,
        responses=_ERRORS,
    )
    async def predict_default(request: Request, top_k: TopK = None) -> dict[str, Any]:
        if service.default_model is None:
            raise ModelNotFound("no model is configured")
        return await predict(service.default_model, request, top_k)

    return router
