"""Open Inference Protocol V2 tensors, shared by its two transports (REST in ``api/v2.py``,
gRPC in ``rpc/``): what an inference request's one input becomes for the service, what the
service's rows become as output tensors, and the REST encodings (JSON and Triton's binary tensor
extension) both ways.

Every model speaks V2 with the inputs and outputs its tasks allow:

* inputs (one per request; the first dimension is the batch of rows): ``image`` ``BYTES``
  (encoded images), ``pixel_values`` ``FP32`` ``[N, 3, H, W]`` (pre-processed, for handlers
  whose input is that array), ``text`` ``BYTES`` (models with a text tower). Any other name is
  taken by its datatype: ``BYTES`` as images, floating point as pixel values.
* outputs: ``probabilities`` ``FP32`` ``[N, classes]`` (with Triton's classification extension:
  ``"parameters": {"classification": k}`` gives ``"score:index:label"`` strings) and
  ``embeddings`` ``FP32`` ``[N, dim]``.

A REST request body is either plain JSON, or (binary extension) a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors, in input order, each
``binary_data_size`` bytes long: little-endian, row-major; a ``BYTES`` tensor is a sequence of
4-byte little-endian lengths each followed by that many bytes, so encoded images travel as they
are. Everything is validated before any of it reaches a model; a mistake is a ``BadRequest``
naming the tensor.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import orjson

from inference_engine.answers import ModelMetadata, OutputName, Rows, TensorSpec
from inference_engine.errors import BadRequest
from inference_engine.numerics import top_k_predictions

HEADER_LENGTH = "inference-header-content-length"

#: The protocol extensions this server implements (server metadata lists them); the binary tensor
#: extension is REST's (gRPC carries raw bytes natively).
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "statistics"]

NUMERIC_TYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(kind).newbyteorder("<")
    for name, kind in {
        "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
        "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
        "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    }.items()
}  # fmt: skip

#: Elements one tensor may hold: 64 full-HD RGB float images, far past any sane request.
MAX_ELEMENTS = 64 * 3 * 1920 * 1080


@dataclass
class InputTensor:
    """One decoded request input: ``array`` for numeric types, ``elements`` for ``BYTES``.

    ``raw``: the elements are the bytes themselves (binary data, gRPC), not JSON strings, which
    carry images as base64.
    """

    name: str
    datatype: str
    shape: list[int]
    array: npt.NDArray[Any] | None = None
    elements: list[bytes] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    raw: bool = False

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1


@dataclass
class RequestedOutput:
    name: str
    binary: bool
    classification: int | None = None


@dataclass
class InferenceRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None  # None: every output the model has
    binary_output: bool


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: npt.NDArray[Any] | None = None  # numeric
    elements: list[bytes] | None = None  # BYTES
    binary: bool = False


def serialize_bytes(elements: list[bytes]) -> bytes:
    """Triton's BYTES wire format: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def deserialize_bytes(buffer: bytes, name: str) -> list[bytes]:
    elements: list[bytes] = []
    offset = 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise BadRequest(f"input {name!r}: truncated BYTES element length")
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > len(buffer):
            raise BadRequest(f"input {name!r}: a BYTES element runs past the end of its data")
        elements.append(buffer[offset : offset + length])
        offset += length
    return elements


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _numeric(data: Any, datatype: str) -> npt.NDArray[Any] | None:
    """``data`` (flat or nested like the shape) as one array, or ``None`` when it is not a
    regular array of numbers (the element-by-element path then says what is wrong)."""
    try:
        array = np.asarray(data, dtype=NUMERIC_TYPES[datatype])
    except (TypeError, ValueError, OverflowError):
        return None
    return array.reshape(-1)


def check_shape(raw: Any, name: str) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of integers")
    if any(d < 0 for d in raw):
        raise BadRequest(f"input {name!r}: 'shape' must not have negative dimensions in a request")
    if math.prod(raw) > MAX_ELEMENTS:
        raise BadRequest(f"input {name!r}: {math.prod(raw)} elements is more than {MAX_ELEMENTS}")
    return list(raw)


def _decode_input(raw: Any, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(raw, dict):
        raise BadRequest("each entry of 'inputs' must be an object")
    name = raw.get("name")
    datatype = raw.get("datatype")
    if not isinstance(name, str) or not name:
        raise BadRequest("each input needs a 'name'")
    if datatype != "BYTES" and datatype not in NUMERIC_TYPES:
        raise BadRequest(f"input {name!r}: unknown datatype {str(datatype)[:16]!r}")
    shape = check_shape(raw.get("shape"), name)
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"input {name!r}: 'parameters' must be an object")
    count = math.prod(shape)
    tensor = InputTensor(name, datatype, shape, parameters=parameters)
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise BadRequest(f"input {name!r}: binary_data_size {size!r} does not fit the request body")
        chunk = bytes(binary[offset : offset + size])
        offset += size
        tensor.raw = True
        if datatype == "BYTES":
            tensor.elements = deserialize_bytes(chunk, name)
        else:
            dtype = NUMERIC_TYPES[datatype]
            if size != count * dtype.itemsize:
                raise BadRequest(
                    f"input {name!r}: {size} bytes do not hold {count} {datatype} elements of shape {shape}"
                )
            tensor.array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
    elif "data" in raw and datatype != "BYTES" and (array := _numeric(raw["data"], datatype)) is not None:
        if array.size != count:
            raise BadRequest(f"input {name!r}: {array.size} values do not fill shape {shape}")
        tensor.array = array.reshape(shape)
    elif "data" in raw:
        flat = _flatten(raw["data"])
        if datatype == "BYTES":
            if not all(isinstance(v, str) for v in flat):
                raise BadRequest(f"input {name!r}: BYTES data must be strings in JSON")
            tensor.elements = [v.encode() for v in flat]
        else:
            if len(flat) != count:
                raise BadRequest(f"input {name!r}: {len(flat)} values do not fill shape {shape}")
            try:
                tensor.array = np.asarray(flat, dtype=NUMERIC_TYPES[datatype]).reshape(shape)
            except (TypeError, ValueError, OverflowError):
                raise BadRequest(f"input {name!r}: data is not all {datatype} values") from None
    else:
        raise BadRequest(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    if tensor.elements is not None and len(tensor.elements) != count:
        raise BadRequest(f"input {name!r}: {len(tensor.elements)} elements do not fill shape {shape}")
    return tensor, offset


def _decode_outputs(raw: Any, binary_output: bool) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise BadRequest("each entry of 'outputs' must be an object with a 'name'")
        parameters = entry.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise BadRequest(f"output {entry['name']!r}: 'parameters' must be an object")
        k = parameters.get("classification")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise BadRequest(f"output {entry['name']!r}: 'classification' must be a positive integer")
        outputs.append(RequestedOutput(entry["name"], bool(parameters.get("binary_data", binary_output)), k))
    return outputs


def decode_request(body: bytes, header_length: str | None) -> InferenceRequest:
    """Parse a V2 inference request (JSON, or JSON header plus binary tensors)."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if not (header_length.isascii() and header_length.isdecimal()) or int(header_length) > len(body):
            raise BadRequest("Inference-Header-Content-Length must be a length within the body")
        split = int(header_length)
        header, binary = body[:split], memoryview(body)[split:]
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        if "recursion" in str(exc):
            raise BadRequest("the JSON header is nested too deeply") from None
        raise BadRequest("the inference request is not valid JSON") from None
    if not isinstance(document, dict):
        raise BadRequest("the inference request must be a JSON object")
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    inputs: list[InputTensor] = []
    offset = 0
    for raw in raw_inputs:
        tensor, offset = _decode_input(raw, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes after the last binary input are not claimed by any")
    request_id = document.get("id")
    binary_output = bool(parameters.get("binary_data_output", False))
    return InferenceRequest(
        id=str(request_id) if request_id is not None else None,
        parameters=parameters,
        inputs=inputs,
        outputs=_decode_outputs(document.get("outputs"), binary_output),
        binary_output=binary_output,
    )


def request_timeout_s(parameters: dict[str, Any]) -> float | None:
    """The request's own timeout from its ``timeout`` parameter (microseconds, as Triton's),
    in seconds; ``None`` when it gives none."""
    raw = parameters.get("timeout")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0:
        raise BadRequest("parameters.timeout must be a positive whole number of microseconds")
    return raw / 1e6


def decode_base64_elements(tensor: InputTensor) -> list[bytes]:
    """BYTES elements that arrived as JSON strings carry images as base64; raw ones are the images."""
    assert tensor.elements is not None
    if tensor.raw:
        return tensor.elements
    try:
        return [base64.b64decode(e, validate=True) for e in tensor.elements]
    except (binascii.Error, ValueError):
        raise BadRequest(f"input {tensor.name!r}: images in JSON must be base64 strings") from None


def encode_response(
    model: str, version: str, request_id: str | None, outputs: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.binary:
            blob = (
                serialize_bytes(out.elements)
                if out.elements is not None
                else np.ascontiguousarray(out.array, dtype=NUMERIC_TYPES[out.datatype]).tobytes()
            )
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif out.elements is not None:
            entry["data"] = [e.decode("utf-8", "replace") for e in out.elements]
        else:
            assert out.array is not None
            # orjson writes numpy arrays directly (C-contiguous, native byte order).
            entry["data"] = np.ascontiguousarray(out.array).reshape(-1)
        entries.append(entry)
    document: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request_id is not None:
        document["id"] = request_id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def metadata_inputs(meta: ModelMetadata) -> list[TensorSpec]:
    """The inputs V2 metadata lists: encoded images, then pre-processed pixels, then texts."""
    image, *texts = meta.inputs
    return [image, *([meta.tensor_input] if meta.tensor_input else []), *texts]


def _rows_arguments(tensor: InputTensor) -> dict[str, Any]:
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


def service_arguments(request: InferenceRequest) -> dict[str, Any]:
    """The keyword arguments of ``InferenceService.run_rows`` that the request's one input becomes."""
    if len(request.inputs) != 1:
        names = ", ".join(t.name for t in request.inputs)
        raise BadRequest(f"send exactly one input (image, pixel_values or text); got {names}")
    return _rows_arguments(request.inputs[0])


def requested_outputs(request: InferenceRequest) -> list[OutputName] | None:
    """The output names asked for (the service checks them), or ``None`` for every one."""
    return [cast("OutputName", w.name) for w in request.outputs] if request.outputs else None


def _output(rows: Rows, wanted: RequestedOutput) -> OutputTensor:
    array = rows.tensors[cast("OutputName", wanted.name)]  # the service answered every name asked
    if wanted.name == "probabilities" and wanted.classification is not None:
        k = min(wanted.classification, len(rows.labels) or wanted.classification)
        elements = [
            f"{p['score']:f}:{p['index']}:{p['label']}".encode()
            for row in array
            for p in top_k_predictions(row, rows.labels, k)
        ]
        return OutputTensor(wanted.name, "BYTES", [len(array), k], elements=elements, binary=wanted.binary)
    return OutputTensor(wanted.name, "FP32", list(array.shape), array=array, binary=wanted.binary)


def output_tensors(request: InferenceRequest, rows: Rows) -> list[OutputTensor]:
    """The outputs asked for, or every one the service answered, as V2 tensors."""
    wanted = request.outputs or [RequestedOutput(name, request.binary_output) for name in rows.tensors]
    return [_output(rows, w) for w in wanted]
