"""Open Inference Protocol messages over gRPC <-> the V2 tensors REST decodes to.

A ``ModelInferRequest`` becomes the same :class:`~inference_engine.v2codec.InferenceRequest` a
REST body does, so both transports share one set of rules (``v2codec.service_arguments``,
``output_tensors``) and one set of error messages; only the wire differs. Tensors arrive either
as ``raw_input_contents`` (one little-endian, row-major buffer per input, BYTES elements
length-prefixed: what ``tritonclient.grpc`` sends) or as typed ``contents``; answers always go
out raw, as Triton's server sends them and every V2 client reads them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from inference_engine.answers import ModelMetadata, TensorSpec
from inference_engine.errors import BadRequest
from inference_engine.rpc.proto import grpc_predict_v2_pb2 as pb
from inference_engine.v2codec import (
    NUMERIC_TYPES,
    InferenceRequest,
    InputTensor,
    OutputTensor,
    RequestedOutput,
    check_shape,
    deserialize_bytes,
    metadata_inputs,
    serialize_bytes,
)

#: The ``InferTensorContents`` field that carries each datatype (FP16 only travels raw).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}  # fmt: skip


def parameter_value(parameter: pb.InferParameter) -> Any:
    """The Python value of one ``InferParameter`` (``None`` when none of its kinds is set)."""
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind is not None else None


def parameters(entries: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {name: parameter_value(value) for name, value in entries.items()}


def _from_raw(tensor: InputTensor, raw: bytes, count: int) -> None:
    if tensor.datatype == "BYTES":
        tensor.elements = deserialize_bytes(raw, tensor.name)
        tensor.raw = True
        return
    dtype = NUMERIC_TYPES[tensor.datatype]
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(
            f"input {tensor.name!r}: {len(raw)} bytes do not hold {count} {tensor.datatype} "
            f"elements of shape {tensor.shape}"
        )
    tensor.array = np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)


def _from_contents(tensor: InputTensor, contents: pb.InferTensorContents, count: int) -> None:
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise BadRequest(f"input {tensor.name!r}: {tensor.datatype} must be sent in raw_input_contents")
    values = getattr(contents, field)
    if tensor.datatype == "BYTES":
        tensor.elements = list(values)
        tensor.raw = True  # gRPC bytes are the images themselves, never base64 text
        return
    if len(values) != count:
        raise BadRequest(f"input {tensor.name!r}: {len(values)} values do not fill shape {tensor.shape}")
    dtype = NUMERIC_TYPES[tensor.datatype]
    array = np.asarray(
        values, dtype=np.uint64 if dtype.kind == "u" else np.int64 if dtype.kind == "i" else dtype
    )
    if (
        dtype.kind in "iu"
        and array.size
        and (array.min() < np.iinfo(dtype).min or array.max() > np.iinfo(dtype).max)
    ):
        # int_contents carries INT8 and INT16 in 32 bits: a value past the type would wrap
        raise BadRequest(f"input {tensor.name!r}: data is not all {tensor.datatype} values")
    tensor.array = array.astype(dtype, copy=False).reshape(tensor.shape)


def _input(message: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> InputTensor:
    name = message.name
    if not name:
        raise BadRequest("each input needs a 'name'")
    if message.datatype != "BYTES" and message.datatype not in NUMERIC_TYPES:
        raise BadRequest(f"input {name!r}: unknown datatype {message.datatype[:16]!r}")
    tensor = InputTensor(
        name,
        message.datatype,
        check_shape(list(message.shape), name),
        parameters=parameters(message.parameters),
    )
    count = math.prod(tensor.shape)
    if raw is not None:
        if message.HasField("contents"):
            raise BadRequest(f"input {name!r}: give its data in 'contents' or raw_input_contents, not both")
        _from_raw(tensor, raw, count)
    elif message.HasField("contents"):
        _from_contents(tensor, message.contents, count)
    else:
        raise BadRequest(f"input {name!r} has neither 'contents' nor raw_input_contents")
    if tensor.elements is not None and len(tensor.elements) != count:
        raise BadRequest(f"input {name!r}: {len(tensor.elements)} elements do not fill shape {tensor.shape}")
    return tensor


def _classification(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> int | None:
    if "classification" not in output.parameters:
        return None
    k = parameter_value(output.parameters["classification"])
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise BadRequest(f"output {output.name!r}: 'classification' must be a positive integer")
    return k


def infer_request(message: pb.ModelInferRequest) -> InferenceRequest:
    """Validate and translate one ``ModelInferRequest``; a mistake is a ``BadRequest`` naming
    the tensor, worded as REST words it."""
    if not message.inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    raws = list(message.raw_input_contents)
    if raws and len(raws) != len(message.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raws)} entries for {len(message.inputs)} inputs; "
            "send one per input, in order"
        )
    inputs = [_input(m, raws[i] if raws else None) for i, m in enumerate(message.inputs)]
    outputs = [
        RequestedOutput(o.name, binary=True, classification=_classification(o)) for o in message.outputs
    ]
    return InferenceRequest(
        id=message.id or None,
        parameters=parameters(message.parameters),
        inputs=inputs,
        outputs=outputs or None,
        binary_output=True,
    )


def _raw(output: OutputTensor) -> bytes:
    if output.elements is not None:
        return serialize_bytes(output.elements)
    return np.ascontiguousarray(output.array, dtype=NUMERIC_TYPES[output.datatype]).tobytes()


def infer_response(
    model: str, version: str, request_id: str | None, outputs: list[OutputTensor]
) -> pb.ModelInferResponse:
    """The answer with every output in ``raw_output_contents``, in the order of ``outputs``."""
    return pb.ModelInferResponse(
        model_name=model,
        model_version=version,
        id=request_id or "",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name=o.name, datatype=o.datatype, shape=o.shape)
            for o in outputs
        ],
        raw_output_contents=[_raw(o) for o in outputs],
    )


def _tensor(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


def metadata_response(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    """A model's metadata, as ``GET /v2/models/{name}`` answers it."""
    return pb.ModelMetadataResponse(
        name=meta.name,
        versions=list(meta.versions) or [meta.version],
        platform=meta.platform,
        inputs=[_tensor(t) for t in metadata_inputs(meta)],
        outputs=[_tensor(t) for t in meta.outputs],
    )
