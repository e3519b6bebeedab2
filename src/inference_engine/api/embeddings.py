"""OpenAI-style embeddings: ``POST /v1/embeddings``, so OpenAI's client and tools work unchanged.

Texts go through the model's text tower; with ``"modality": "image"`` (infinity's extension)
each input is a ``data:image/...;base64,`` URI instead. ``encoding_format: base64`` (what the
official client asks for by default) answers each vector as base64 of little-endian float32.
Every input is batched on its own with everybody else's, like any other request.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference_engine.answers import Embeddings
from inference_engine.api.payload import decode_base64_image
from inference_engine.api.request import InferenceCall, json_response
from inference_engine.errors import BadRequest
from inference_engine.service import InferenceService
from inference_engine.settings import Settings
from inference_engine.transport import off_loop


class EmbeddingRequest(BaseModel):
    """The body of ``POST /v1/embeddings`` (OpenAI's fields plus ``modality``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=256)
    modality: Literal["text", "image"] = "text"


def _inputs(body: EmbeddingRequest) -> list[str]:
    values = [body.input] if isinstance(body.input, str) else body.input
    if not values:
        raise BadRequest("'input' must not be empty")
    if not all(isinstance(v, str) for v in values):
        raise BadRequest("'input' must be text (token ids are not accepted; send the text itself)")
    return [str(v) for v in values]


def _encode(vector: np.ndarray[Any, Any], encoding: str) -> np.ndarray[Any, Any] | str:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()
    return np.ascontiguousarray(vector, dtype=np.float32)  # written as JSON numbers by json_response


def build_router(service: InferenceService, settings: Settings) -> APIRouter:
    router = APIRouter(tags=["openai-compatible"])

    @router.post(
        "/v1/embeddings",
        summary="Embeddings of texts or images (OpenAI's request and response shape)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": EmbeddingRequest.model_json_schema()}},
            }
        },
        response_model=dict[str, Any],
    )
    async def embeddings(request: Request) -> Response:
        call = InferenceCall(request, settings.server)
        raw = await call.body()
        body = await off_loop(len(raw), _parse, raw)
        route = call.routed(service.route(body.model, key=call.routing_key))
        inputs = _inputs(body)
        known = service.model_metadata(route.model, route.version).embedding_dimension
        if body.dimensions is not None and known is not None and body.dimensions != known:
            raise BadRequest(f"model {route.model} answers {known} dimensions, not {body.dimensions}")
        if body.modality == "image":
            kinds: dict[str, Any] = {"images": [decode_base64_image(v, "input") for v in inputs]}
        else:
            kinds = {"texts": inputs}
        result = await call.answer(
            service.embed(
                route, deadline=call.deadline, request_id=call.request_id, caller=call.caller, **kinds
            )
        )
        size = len(result.vectors) * result.dimension * 4
        return await json_response(size, _answer, result, body, inputs)

    return router


def _parse(raw: bytes) -> EmbeddingRequest:
    try:
        return EmbeddingRequest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"{where}: {first['msg']}") from None


def _answer(result: Embeddings, body: EmbeddingRequest, inputs: list[str]) -> dict[str, Any]:
    # Usage counts words, not model tokens: it is there for clients that read it, not billing.
    tokens = sum(len(text.split()) for text in inputs) if body.modality == "text" else 0
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
            for i, v in enumerate(result.vectors)
        ],
        "model": result.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
