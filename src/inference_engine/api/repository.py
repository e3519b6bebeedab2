"""Model control over HTTP: the Open Inference Protocol's repository extension, as Triton has it.

``POST /v2/repository/index`` lists every model folder and served version with its state;
``POST /v2/repository/models/{name}/load`` brings a model's served versions in line with its
folder; ``.../unload`` drains and releases it. ``tritonclient``'s ``get_model_repository_index``,
``load_model`` and ``unload_model`` work unchanged. Off unless ``server.model_control`` is on;
with auth on, only admin keys reach these routes (see ``api/access.py``).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from inference_engine.api.request import InferenceCall
from inference_engine.control import check_control_request
from inference_engine.errors import BadRequest
from inference_engine.service import InferenceService
from inference_engine.settings import Settings

#: The control routes' common start (the access middleware keeps them to admin keys).
PREFIX = "/v2/repository"


async def _document(call: InferenceCall) -> dict[str, Any]:
    """The optional JSON body (Triton's clients send ``{}`` or ``{"parameters": {...}}``)."""
    raw = await call.body()
    if not raw.strip():
        return {}
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body must be JSON") from None
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    return document


def build_router(service: InferenceService, settings: Settings) -> APIRouter:
    router = APIRouter(tags=["model control"])
    control = service.control

    @router.post(f"{PREFIX}/index", summary="Every model and version in the repository, with its state")
    async def index(request: Request) -> JSONResponse:
        document = await _document(InferenceCall(request, settings.server))
        ready_only = bool(document.get("ready", False))
        entries = [
            {"name": e.name, **({"version": e.version} if e.version is not None else {}),
             "state": e.state, "reason": e.reason}
            for e in control.index(ready_only)
        ]  # fmt: skip
        return JSONResponse(entries)

    @router.post(
        f"{PREFIX}/models/{{name}}/load",
        summary="Load or reload a model from its folder: new versions warm before traffic moves",
        responses={400: {"description": "The folder or a version is wrong; what served still serves"}},
    )
    async def load(name: str, request: Request) -> JSONResponse:
        check_control_request(settings.server)
        document = await _document(InferenceCall(request, settings.server))
        parameters = document.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise BadRequest("'parameters' must be an object")
        check_control_request(settings.server, parameters)
        await control.load(name)
        return JSONResponse({})

    @router.post(f"{PREFIX}/models/{{name}}/unload", summary="Drain and unload every version of a model")
    async def unload(name: str, request: Request) -> JSONResponse:
        check_control_request(settings.server)
        await _document(InferenceCall(request, settings.server))
        await control.unload(name)
        return JSONResponse({})

    return router
