"""Inference routes: ``POST /v1/models/{name}/predict``, ``POST /predict`` (default model) and
``POST /v1/models/{name}/embed``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from inference_engine.answers import Embeddings, Prediction
from inference_engine.api.payload import (
    MAX_TOP_K,
    labels_from_query,
    query_top_k,
    read_embed_request,
    read_image_request,
)
from inference_engine.api.request import InferenceCall, json_response
from inference_engine.fetch import ImageFetcher
from inference_engine.service import InferenceService
from inference_engine.settings import Settings

_TIMEOUT_HEADER: dict[str, Any] = {
    "name": "X-Request-Timeout-Ms",
    "in": "header",
    "required": False,
    "description": "This request's deadline in ms (capped by server.max_request_timeout_s).",
    "schema": {"type": "integer", "minimum": 1},
}

# The predict routes read their query parameters themselves (``payload.query_top_k`` and
# ``labels_from_query``) instead of through FastAPI's per-request dependency solving, which cost
# more of the event loop than the rest of the route; the schema still documents them.
_IMAGE_BODY: dict[str, Any] = {
    "parameters": [
        {
            "name": "top_k",
            "in": "query",
            "required": False,
            "description": "How many predictions to return.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
        },
        {
            "name": "labels",
            "in": "query",
            "required": False,
            "description": "Zero-shot labels (repeat the parameter, or separate with commas).",
            "schema": {"type": "array", "items": {"type": "string"}},
            "style": "form",
            "explode": True,
        },
        _TIMEOUT_HEADER,
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


def _image_body(*path_parameters: str) -> dict[str, Any]:
    """The predict routes' OpenAPI additions, with the path parameters they take from the URL."""
    declared = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in path_parameters
    ]
    return {**_IMAGE_BODY, "parameters": [*declared, *_IMAGE_BODY["parameters"]]}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": text}
    for code, text in {
        400: "Malformed request",
        404: "Unknown model or version",
        413: "Body too large",
        415: "Not a supported image",
        422: "Invalid image or parameter",
        503: "Queue full, model not ready, or shutting down (see Retry-After)",
        504: "Deadline exceeded",
    }.items()
}

_EMBED_BODY: dict[str, Any] = {
    "parameters": [_TIMEOUT_HEADER],
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


def format_prediction(prediction: Prediction, request_id: str, total_s: float) -> dict[str, Any]:
    return {
        "model": prediction.model,
        "model_version": prediction.model_version,
        "request_id": request_id,
        **prediction.body,
        **({} if prediction.cached is None else {"cached": prediction.cached}),
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
        "embeddings": embeddings.vectors,  # numpy rows: json_response writes them from their buffers
        **({} if embeddings.cached is None else {"cached": embeddings.cached}),
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
    server = settings.server

    async def predict(name: str | None, request: Request, version: str | None = None) -> Response:
        call = InferenceCall(request, server)
        top_k = query_top_k(request)
        # 404 before reading a body for an unknown model or version; 503 when it cannot take it.
        route = call.routed(service.route(name, version, call.routing_key))
        service.admit(route, call.deadline, call.caller)  # one image: its deadline can be judged now
        body = await call.read(
            read_image_request(request, server.max_body_bytes, fetcher),
            "the image did not arrive within the request deadline",
        )
        labels = body.labels
        if labels is None:
            labels = labels_from_query(request.query_params.getlist("labels"))
        prediction = await call.answer(
            service.infer(
                route,
                body.data,
                top_k=top_k,
                deadline=call.deadline,
                request_id=call.request_id,
                caller=call.caller,
                labels=labels,
            )
        )
        return await json_response(0, format_prediction, prediction, call.request_id, call.elapsed())

    @router.post(
        "/v1/models/{name}/predict",
        summary="Classify an image with the named model (or rank zero-shot labels)",
        openapi_extra=_image_body("name"),
        responses=_ERRORS,
        response_model=dict[str, Any],
    )
    async def predict_named(request: Request) -> Response:
        return await predict(request.path_params["name"], request)

    @router.post(
        "/v1/models/{name}/versions/{version}/predict",
        summary="Classify an image with one version of the named model",
        openapi_extra=_image_body("name", "version"),
        responses=_ERRORS,
        response_model=dict[str, Any],
    )
    async def predict_version(request: Request) -> Response:
        params = request.path_params
        return await predict(params["name"], request, params["version"])

    @router.post(
        "/predict",
        summary="Classify an image with the default model",
        openapi_extra=_image_body(),
        responses=_ERRORS,
        response_model=dict[str, Any],
    )
    async def predict_default(request: Request) -> Response:
        return await predict(None, request)

    @router.post(
        "/v1/models/{name}/embed",
        summary="L2-normalised embeddings of images or texts (CLIP, FLAVA, ONNX embedders)",
        openapi_extra=_EMBED_BODY,
        responses=_ERRORS,
        response_model=dict[str, Any],
    )
    async def embed(name: str, request: Request, version: str | None = None) -> Response:
        call = InferenceCall(request, server)
        route = call.routed(service.route(name, version, call.routing_key))
        service.admit(route)
        body = await call.read(
            read_embed_request(request, server.max_body_bytes, server.max_items_per_request),
            "the inputs did not arrive within the request deadline",
        )
        embeddings = await call.answer(
            service.embed(
                route,
                images=body.images,
                texts=body.texts,
                deadline=call.deadline,
                request_id=call.request_id,
                caller=call.caller,
            )
        )
        size = len(embeddings.vectors) * embeddings.dimension * 4
        return await json_response(size, format_embeddings, embeddings, call.request_id, call.elapsed())

    router.add_api_route(
        "/v1/models/{name}/versions/{version}/embed",
        embed,
        methods=["POST"],
        summary="Embeddings from one version of the named model",
        openapi_extra=_EMBED_BODY,
        responses=_ERRORS,
        response_model=dict[str, Any],
    )
    return router
