"""OpenAI-style embeddings: ``POST /v1/embeddings``, so OpenAI's client and tools work unchanged.

Texts go through the model's text tower; with ``"modality": "image"`` (infinity's extension)
each input is a ``data:image/...;base64,`` URI instead. ``encoding_format: base64`` (what the
official client asks for by default) answers each vector as base64 of little-endian float32.
Every input is batched on its own with everybody else's, like any other request.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference_engine.api.payload import capped_stream, decode_base64_image
from inference_engine.api.routes import loop_time, request_timeout_s, until_disconnect
from inference_engine.errors import BadRequest, DeadlineExceeded
from inference_engine.logging import current_request
from inference_engine.service import InferenceService
from inference_engine.settings import Settings


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


def _encode(vector: np.ndarray[Any, Any], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()
    floats: list[float] = vector.astype(np.float32).tolist()
    return floats


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
    )
    async def embeddings(request: Request) -> dict[str, Any]:
        ctx = current_request.get()
        assert ctx is not None
        started: float = ctx.extra.get("started", time.monotonic())
        deadline = started + request_timeout_s(request, settings)
        try:
            async with asyncio.timeout_at(loop_time(deadline)):
                raw = b"".join([c async for c in capped_stream(request, settings.server.max_body_bytes)])
        except TimeoutError:
            raise DeadlineExceeded("the request did not arrive within its deadline") from None
        try:
            body = EmbeddingRequest.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise BadRequest(f"{where}: {first['msg']}") from None
        runtime = service.runtime(body.model)
        ctx.model = runtime.name
        inputs = _inputs(body)
        known = runtime.handlers[0].embedding_dimension() if runtime.handlers else None
        if body.dimensions is not None and known is not None and body.dimensions != known:
            raise BadRequest(f"model {runtime.name} answers {known} dimensions, not {body.dimensions}")
        if body.modality == "image":
            kinds: dict[str, Any] = {"images": [decode_base64_image(v, "input") for v in inputs]}
        else:
            kinds = {"texts": inputs}
        result = await until_disconnect(
            service.embed(runtime.name, deadline=deadline, request_id=ctx.request_id, **kinds),
            request.receive,
        )
        ctx.batch_size = max(result.batch_sizes)
        # Usage counts words, not model tokens: it is there for clients that read it, not billing.
        tokens = sum(len(text.split()) for text in inputs) if body.modality == "text" else 0
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
                for i, v in enumerate(result.vectors)
            ],
            "model": runtime.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return router
