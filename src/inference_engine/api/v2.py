"""Open Inference Protocol V2 over REST (KServe, Triton, MLServer clients work unchanged).

Every model speaks it with the inputs and outputs its tasks allow:

* inputs (one per request; the first dimension is the batch of rows): ``image`` ``BYTES``
  (encoded images), ``pixel_values`` ``FP32`` ``[N, 3, H, W]`` (pre-processed, for handlers
  whose input is that array), ``text`` ``BYTES`` (models with a text tower). Any other name is
  taken by its datatype: ``BYTES`` as images, floating point as pixel values.
* outputs: ``probabilities`` ``FP32`` ``[N, classes]`` (with Triton's classification extension:
  ``"parameters": {"classification": k}`` gives ``"score:index:label"`` strings) and
  ``embeddings`` ``FP32`` ``[N, dim]``.

Each row goes through the model's dynamic batcher on its own, so rows of one request and
single-image requests share forward passes; rows come back together and in order.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from inference_engine import __version__
from inference_engine.api.payload import capped_stream
from inference_engine.api.routes import loop_time, request_timeout_s, until_disconnect
from inference_engine.api.v2codec import (
    HEADER_LENGTH,
    NUMERIC_TYPES,
    InferenceRequest,
    InputTensor,
    OutputTensor,
    RequestedOutput,
    decode_base64_elements,
    decode_request,
    encode_response,
)
from inference_engine.errors import BadRequest, DeadlineExceeded, ModelNotFound
from inference_engine.logging import current_request
from inference_engine.models.base import ModelHandler
from inference_engine.models.classifier import top_k_predictions
from inference_engine.runtime import ModelRuntime
from inference_engine.service import InferenceService, Rows
from inference_engine.settings import Settings

EXTENSIONS = ["binary_tensor_data", "classification", "statistics"]
PLATFORMS = {"torch": "pytorch", "onnx": "onnxruntime_onnx"}


def _versioned(runtime: ModelRuntime, version: str | None) -> ModelRuntime:
    if version is not None and runtime.spec is not None and version != runtime.config.version:
        raise ModelNotFound(
            f"model {runtime.name} has no version {version[:32]!r} (served: {runtime.config.version})"
        )
    return runtime


def model_metadata(runtime: ModelRuntime) -> dict[str, Any]:
    """``GET /v2/models/{m}``: the tensors this model takes and gives."""
    # The handler's own copy: HF handlers resolve pre-processing from their folder at load.
    config = runtime.handlers[0].config if runtime.handlers else runtime.config
    body: dict[str, Any] = {
        "name": runtime.name,
        "versions": [config.version],
        "platform": PLATFORMS.get(config.backend, "pytorch"),
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [],
    }
    if not runtime.handlers:
        return body
    handler = runtime.handlers[0]
    tasks = handler.tasks()
    size = config.preprocessing.crop
    if handler.accepts_tensors:
        shape = [-1, size, size, 3] if config.preprocessing.layout == "nhwc" else [-1, 3, size, size]
        body["inputs"].append({"name": "pixel_values", "datatype": "FP32", "shape": shape})
    if "embed_text" in tasks:
        body["inputs"].append({"name": "text", "datatype": "BYTES", "shape": [-1]})
    if "classify" in tasks:
        body["outputs"].append(
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(handler.labels())]}
        )
    if tasks & {"embed_image", "embed_text"}:
        dimension = handler.embedding_dimension() or -1
        body["outputs"].append({"name": "embeddings", "datatype": "FP32", "shape": [-1, dimension]})
    return body


def _classification(handler: ModelHandler[Any, Any], rows: Rows, k: int) -> list[bytes]:
    labels = handler.labels()
    strings: list[bytes] = []
    for output in rows.outputs:
        for p in top_k_predictions(handler.scores(output), labels, k):
            strings.append(f"{p['score']:f}:{p['index']}:{p['label']}".encode())
    return strings


def _output(handler: ModelHandler[Any, Any], rows: Rows, wanted: RequestedOutput) -> OutputTensor:
    count = len(rows.outputs)
    if wanted.name == "probabilities":
        if rows.modality == "text":
            raise BadRequest("output 'probabilities' needs an image input")
        if wanted.classification is not None:
            k = min(wanted.classification, len(handler.labels()) or wanted.classification)
            elements = _classification(handler, rows, k)
            return OutputTensor(wanted.name, "BYTES", [count, k], elements=elements, binary=wanted.binary)
        array = np.stack([handler.scores(o) for o in rows.outputs])
        return OutputTensor(wanted.name, "FP32", list(array.shape), array=array, binary=wanted.binary)
    if wanted.name == "embeddings":
        vectors = rows.outputs if rows.modality == "text" else [handler.embed(o) for o in rows.outputs]
        array = np.stack(vectors).astype(np.float32)
        return OutputTensor(wanted.name, "FP32", list(array.shape), array=array, binary=wanted.binary)
    raise AssertionError(f"unchecked output {wanted.name!r}")  # _check_outputs ran first


OUTPUT_NAMES = ("probabilities", "embeddings")


def _check_outputs(request: InferenceRequest) -> None:
    """Refuse unknown outputs before any forward pass is spent on the request."""
    for wanted in request.outputs or []:
        if wanted.name not in OUTPUT_NAMES:
            raise BadRequest(f"unknown output {wanted.name[:64]!r}; outputs are: {', '.join(OUTPUT_NAMES)}")


def _default_outputs(handler: ModelHandler[Any, Any], rows: Rows, binary: bool) -> list[RequestedOutput]:
    tasks = handler.tasks()
    names: list[str] = []
    if rows.modality == "image" and "classify" in tasks:
        names.append("probabilities")
    if (rows.modality == "image" and "embed_image" in tasks) or rows.modality == "text":
        names.append("embeddings")
    return [RequestedOutput(name, binary) for name in names]


def _rows_kwargs(tensor: InputTensor) -> dict[str, Any]:
    """Which kind of rows an input holds: its name first, then its datatype."""
    if tensor.datatype == "BYTES":
        if tensor.name == "text":
            assert tensor.elements is not None
            try:
                return {"texts": [e.decode("utf-8") for e in tensor.elements]}
            except UnicodeDecodeError:
                raise BadRequest("input 'text' must be UTF-8") from None
        return {"images": decode_base64_elements(tensor)}
    if tensor.datatype in ("FP16", "FP32", "FP64"):
        assert tensor.array is not None
        if tensor.array.ndim != 4:
            raise BadRequest(
                f"input {tensor.name!r}: pixel values must have shape [N, 3, H, W], got {tensor.shape}"
            )
        return {"tensors": list(tensor.array.astype(np.float32, copy=False))}
    raise BadRequest(
        f"input {tensor.name!r}: datatype {tensor.datatype} is not an image, text or pixel tensor"
    )


def _encode(runtime: ModelRuntime, request: InferenceRequest, rows: Rows) -> Response:
    handler = rows.handler
    wanted = request.outputs or _default_outputs(handler, rows, request.binary_output)
    outputs = [_output(handler, rows, w) for w in wanted]
    body, header_length = encode_response(runtime.name, rows.model_version, request.id, outputs)
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
    router = APIRouter(tags=["open inference protocol v2"])

    @router.get("/v2", summary="Server metadata")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "inference-engine", "version": __version__, "extensions": EXTENSIONS}

    @router.get("/v2/health/live", summary="Liveness")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/v2/health/ready", summary="Readiness: every model ready")
    async def ready() -> JSONResponse:
        models = service.readiness()
        is_ready = bool(models) and not service.draining and all(r is None for r in models.values())
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @router.get("/v2/models/stats", summary="Statistics of every model (Triton's statistics extension)")
    async def all_stats() -> dict[str, Any]:
        return {
            "model_stats": [
                r.stats.as_triton(name, r.spec.config.version if r.spec else "")
                for name, r in sorted(service.runtimes.items())
            ]
        }

    async def metadata(name: str, version: str | None = None) -> dict[str, Any]:
        return model_metadata(_versioned(service.runtime(name), version))

    async def model_ready(name: str, version: str | None = None) -> JSONResponse:
        runtime = _versioned(service.runtime(name), version)
        ok = runtime.ready and not service.draining
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def model_stats(name: str, version: str | None = None) -> dict[str, Any]:
        runtime = _versioned(service.runtime(name), version)
        config_version = runtime.spec.config.version if runtime.spec else ""
        return {"model_stats": [runtime.stats.as_triton(name, config_version)]}

    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        ctx = current_request.get()
        assert ctx is not None
        started: float = ctx.extra.get("started", time.monotonic())
        runtime = _versioned(service.runtime(name), version)
        ctx.model = runtime.name
        deadline = started + request_timeout_s(request, settings)
        max_bytes = settings.server.max_body_bytes
        try:
            async with asyncio.timeout_at(loop_time(deadline)):
                body = b"".join([chunk async for chunk in capped_stream(request, max_bytes)])
        except TimeoutError:
            raise DeadlineExceeded("the request did not arrive within its deadline") from None
        decoded = decode_request(body, request.headers.get(HEADER_LENGTH))
        if len(decoded.inputs) != 1:
            names = ", ".join(t.name for t in decoded.inputs)
            raise BadRequest(f"send exactly one input (image, pixel_values or text); got {names}")
        _check_outputs(decoded)
        rows = await until_disconnect(
            service.run_rows(
                runtime.name, deadline=deadline, request_id=ctx.request_id, **_rows_kwargs(decoded.inputs[0])
            ),
            request.receive,
        )
        ctx.batch_size = max(rows.batch_sizes)
        return _encode(runtime, decoded, rows)

    # Each route twice: for the model, and for one version of it (the only one served).
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
