"""Open Inference Protocol V2 over REST (KServe, Triton, MLServer clients work unchanged).

The tensors each model takes and gives are described in ``v2codec.py`` (shared with gRPC). Each
row goes through the model's dynamic batcher on its own, so rows of one request and single-image
requests share forward passes; rows come back together and in order.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from inference_engine import __version__
from inference_engine.answers import ModelMetadata, Rows
from inference_engine.api.health import tensor
from inference_engine.api.request import InferenceCall
from inference_engine.service import InferenceService
from inference_engine.settings import Settings
from inference_engine.transport import off_loop
from inference_engine.v2codec import (
    EXTENSIONS,
    HEADER_LENGTH,
    NUMERIC_TYPES,
    InferenceRequest,
    decode_request,
    encode_response,
    metadata_inputs,
    output_tensors,
    request_timeout_s,
    requested_outputs,
    service_arguments,
)


def metadata_body(meta: ModelMetadata) -> dict[str, Any]:
    """``GET /v2/models/{m}``: the tensors this model takes and gives."""
    inputs = metadata_inputs(meta)
    return {
        "name": meta.name,
        "versions": list(meta.versions) or [meta.version],
        "platform": meta.platform,
        "inputs": [tensor(t, described=False) for t in inputs],
        "outputs": [tensor(t, described=False) for t in meta.outputs],
    }


def decode(body: bytes, header_length: str | None) -> tuple[InferenceRequest, dict[str, Any]]:
    """The request and the service arguments its one input becomes (off the loop when large)."""
    decoded = decode_request(body, header_length)
    return decoded, service_arguments(decoded)


def encode(request: InferenceRequest, rows: Rows) -> Response:
    """The V2 answer for ``rows``: the outputs asked for, or every one the service answered."""
    body, header_length = encode_response(
        rows.model, rows.model_version, request.id, output_tensors(request, rows)
    )
    if header_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )


_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string", "enum": ["BYTES", *NUMERIC_TYPES]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "An inference request (JSON), or with the binary tensor extension a JSON header of "
            "Inference-Header-Content-Length bytes followed by the raw tensors."
        ),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": _TENSOR, "minItems": 1},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                            },
                        },
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {
        "400": {"description": 'Malformed request: {"error": "<message>"}'},
        "404": {"description": "Unknown model or version"},
        "422": {
            "description": "An input the model refuses (an undecodable image, a tensor of the wrong shape)"
        },
        "503": {"description": "Queue full, model not ready, or shutting down (see Retry-After)"},
    },
}


def build_router(service: InferenceService, settings: Settings) -> APIRouter:
    # Its routes also decide the error shape: the request-context middleware matches requests
    # against them before access control runs (errors on them answer {"error": "..."}).
    router = APIRouter(tags=["open inference protocol v2"])

    @router.get("/v2", summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "inference-engine", "version": __version__, "extensions": EXTENSIONS}

    @router.get("/v2/health/live", summary="Liveness (as /health)")
    async def live() -> JSONResponse:
        is_live = service.liveness() is None
        return JSONResponse({"live": is_live}, status_code=200 if is_live else 503)

    @router.get("/v2/health/ready", summary="Readiness: every model ready")
    async def ready() -> JSONResponse:
        is_ready = service.readiness().ready
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @router.get("/v2/models/stats", summary="Statistics of every model (Triton's statistics extension)")
    async def all_stats() -> dict[str, Any]:
        return {"model_stats": service.statistics()}

    async def metadata(name: str, version: str | None = None) -> dict[str, Any]:
        return metadata_body(service.model_metadata(name, version))

    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        ok = service.model_ready(name, version)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def model_stats(name: str, version: str | None = None) -> dict[str, Any]:
        return {"model_stats": service.statistics(name, version)}

    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        call = InferenceCall(request, settings.server)
        route = call.routed(service.route(name, version, call.routing_key))
        service.admit(route)
        body = await call.body()
        decoded, rows_kwargs = await off_loop(len(body), decode, body, request.headers.get(HEADER_LENGTH))
        timeout_s = request_timeout_s(decoded.parameters)
        if timeout_s is not None:
            call.limit_timeout(timeout_s)
        rows = await call.answer(
            service.run_rows(
                route,
                deadline=call.deadline,
                request_id=call.request_id,
                caller=call.caller,
                outputs=requested_outputs(decoded),
                **rows_kwargs,
            )
        )
        size = sum(array.nbytes for array in rows.tensors.values())
        return await off_loop(size, encode, decoded, rows)

    # Each route twice: for the model (its traffic weights choose the version), and one version.
    versioned = "/v2/models/{name}/versions/{version}"
    router.add_api_route(versioned, metadata, methods=["GET"], summary="Model metadata (one version)")
    router.add_api_route(
        f"{versioned}/ready", model_ready, methods=["GET"], summary="Readiness (one version)"
    )
    router.add_api_route(
        f"{versioned}/stats", model_stats, methods=["GET"], summary="Statistics (one version)"
    )
    router.add_api_route(
        f"{versioned}/infer",
        infer,
        methods=["POST"],
        summary="Inference (one version)",
        openapi_extra=INFER_BODY,
    )

    @router.get("/v2/models/{name}", summary="Model metadata")
    async def metadata_latest(name: str) -> dict[str, Any]:
        return await metadata(name)

    @router.get("/v2/models/{name}/ready", summary="Model readiness")
    async def model_ready_latest(name: str) -> JSONResponse:
        return await model_ready(name)

    @router.get("/v2/models/{name}/stats", summary="Model statistics (Triton's statistics extension)")
    async def model_stats_latest(name: str) -> dict[str, Any]:
        return await model_stats(name)

    @router.post("/v2/models/{name}/infer", summary="Inference", openapi_extra=INFER_BODY)
    async def infer_latest(name: str, request: Request) -> Response:
        return await infer(name, request)

    return router
