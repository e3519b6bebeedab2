"""Inference routes: ``POST /v1/models/{name}/predict``, ``POST /predict`` (default model) and
``POST /v1/models/{name}/embed``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from starlette.types import Receive

from inference_engine.api.payload import labels_from_query, read_embed_request, read_image_request
from inference_engine.errors import BadRequest, ClientDisconnected, DeadlineExceeded, ModelNotFound
from inference_engine.fetch import ImageFetcher
from inference_engine.logging import current_request
from inference_engine.service import Embeddings, InferenceService, Prediction
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
                        "labels": {
                            "type": "array",
                            "items": {"type": "string", "minLength": 1},
                            "description": "Zero-shot labels (CLIP, FLAVA): rank these instead.",
                        },
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
Labels = Annotated[
    list[str] | None,
    Query(description="Zero-shot labels (repeat the parameter, or separate with commas)."),
]

_EMBED_BODY: dict[str, Any] = {
    "parameters": _IMAGE_BODY["parameters"],
    "requestBody": {
        "required": True,
        "description": (
            "Images as multipart 'file' parts (one or more) or a raw image body, or JSON with "
            "base64 'images' or plain 'texts'."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        "texts": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    },
                    "additionalProperties": False,
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


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


def loop_time(monotonic_deadline: float) -> float:
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


def format_embeddings(embeddings: Embeddings, request_id: str, total_s: float) -> dict[str, Any]:
    return {
        "model": embeddings.model,
        "model_version": embeddings.model_version,
        "request_id": request_id,
        "modality": embeddings.modality,
        "dimension": embeddings.dimension,
        "embeddings": [vector.tolist() for vector in embeddings.vectors],
        "timings_ms": {
            "preprocess": round(embeddings.preprocess_s * 1000, 3),
            "queue": round(embeddings.queue_s * 1000, 3),
            "inference": round(embeddings.inference_s * 1000, 3),
            "total": round(total_s * 1000, 3),
        },
    }


def build_router(
    service: InferenceService, settings: Settings, fetcher: ImageFetcher | None = None
) -> APIRouter:
    router = APIRouter(tags=["inference"])

    def begin(name: str, request: Request) -> tuple[Any, str, float, float]:
        """The request context, the known model name, and when this request started and must end."""
        ctx = current_request.get()
        assert ctx is not None
        started: float = ctx.extra.get("started", time.monotonic())
        runtime = service.runtime(name)  # 404 before reading a body for an unknown model
        ctx.model = runtime.name  # only known names become metric labels
        return ctx, runtime.name, started, started + request_timeout_s(request, settings)

    async def predict(
        name: str, request: Request, top_k: int | None, query_labels: list[str] | None
    ) -> dict[str, Any]:
        ctx, name, started, deadline = begin(name, request)
        try:
            async with asyncio.timeout_at(loop_time(deadline)):
                body = await read_image_request(request, settings.server.max_body_bytes, fetcher)
        except TimeoutError:
            raise DeadlineExceeded("the image did not arrive within the request deadline") from None
        labels = body.labels if body.labels is not None else labels_from_query(query_labels)
        prediction = await until_disconnect(
            service.infer(
                name, body.data, top_k=top_k, deadline=deadline, request_id=ctx.request_id, labels=labels
            ),
            request.receive,
        )
        ctx.batch_size = prediction.batch_size
        return format_prediction(prediction, ctx.request_id, time.monotonic() - started)

    @router.post(
        "/v1/models/{name}/predict",
        summary="Classify an image with the named model (or rank zero-shot labels)",
        openapi_extra=_IMAGE_BODY,
        responses=_ERRORS,
    )
    async def predict_named(
        name: str, request: Request, top_k: TopK = None, labels: Labels = None
    ) -> dict[str, Any]:
        return await predict(name, request, top_k, labels)

    @router.post(
        "/predict",
        summary="Classify an image with the default model",
        openapi_extra=_IMAGE_BODY,
        responses=_ERRORS,
    )
    async def predict_default(request: Request, top_k: TopK = None, labels: Labels = None) -> dict[str, Any]:
        if service.default_model is None:
            raise ModelNotFound("no model is configured")
        return await predict(service.default_model, request, top_k, labels)

    @router.post(
        "/v1/models/{name}/embed",
        summary="L2-normalised embeddings of images or texts (CLIP, FLAVA, ONNX embedders)",
        openapi_extra=_EMBED_BODY,
        responses=_ERRORS,
    )
    async def embed(name: str, request: Request) -> dict[str, Any]:
        ctx, name, started, deadline = begin(name, request)
        server = settings.server
        try:
            async with asyncio.timeout_at(loop_time(deadline)):
                body = await read_embed_request(request, server.max_body_bytes, server.max_items_per_request)
        except TimeoutError:
            raise DeadlineExceeded("the inputs did not arrive within the request deadline") from None
        embeddings = await until_disconnect(
            service.embed(
                name, images=body.images, texts=body.texts, deadline=deadline, request_id=ctx.request_id
            ),
            request.receive,
        )
        ctx.batch_size = max(embeddings.batch_sizes)
        return format_embeddings(embeddings, ctx.request_id, time.monotonic() - started)

    return router
