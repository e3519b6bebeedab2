"""V2 tensor encoding both ways, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from inference_engine.errors import BadRequest
from inference_engine.v2codec import (
    OutputTensor,
    decode_request,
    deserialize_bytes,
    encode_response,
    serialize_bytes,
)


def test_bytes_round_trip() -> None:
    elements = [b"", b"\x00\xff", "é".encode()]
    assert deserialize_bytes(serialize_bytes(elements), "x") == elements


@pytest.mark.parametrize("buffer", [b"\x01\x00", b"\x05\x00\x00\x00abc"])
def test_truncated_bytes_are_refused(buffer: bytes) -> None:
    with pytest.raises(BadRequest, match="input 'x'"):
        deserialize_bytes(buffer, "x")


def test_binary_request_with_two_inputs_in_order() -> None:
    pixels = np.arange(6, dtype="<f4").reshape(1, 2, 3)
    images = serialize_bytes([b"jpeg-1", b"jpeg-2"])
    header = json.dumps(
        {
            "id": 7,
            "inputs": [
                {"name": "p", "datatype": "FP32", "shape": [1, 2, 3], "parameters": {"binary_data_size": 24}},
                {
                    "name": "i",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(images)},
                },
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    request = decode_request(header + pixels.tobytes() + images, str(len(header)))
    assert request.id == "7" and request.binary_output and request.outputs is None
    assert np.array_equal(request.inputs[0].array, pixels)
    assert request.inputs[1].elements == [b"jpeg-1", b"jpeg-2"]


def test_json_request_with_nested_data_and_outputs() -> None:
    body = {
        "inputs": [{"name": "p", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2, "binary_data": True}}],
    }
    request = decode_request(json.dumps(body).encode(), None)
    assert request.inputs[0].array is not None and request.inputs[0].array.tolist() == [[1, 2], [3, 4]]
    assert request.outputs is not None
    assert (request.outputs[0].classification, request.outputs[0].binary) == (2, True)


def one(datatype: str = "FP32", shape: object = (1,), **fields: object) -> dict[str, object]:
    return {"inputs": [{"name": "a", "datatype": datatype, "shape": list(shape), **fields}]}  # type: ignore[call-overload]


FP32_ONE = one(data=[1])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"inputs": [1]}, "must be an object"),
        ({"inputs": [{"datatype": "FP32"}]}, "needs a 'name'"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": "x"}]}, "list of integers"),
        (one(shape=(100000, 100000)), "more than"),
        (one(parameters=3), "'parameters'"),
        (one("BYTES", data=[1]), "strings"),
        ({**FP32_ONE, "parameters": 1}, "'parameters' must be"),
        ({**FP32_ONE, "outputs": {}}, "'outputs' must be a list"),
        ({**FP32_ONE, "outputs": [{"name": "o", "parameters": {"classification": 0}}]}, "positive integer"),
        ({**FP32_ONE, "outputs": [{"name": "o", "parameters": 5}]}, "must be an object"),
        ({**FP32_ONE, "outputs": [{}]}, "with a 'name'"),
    ],
)
def test_malformed_json_names_the_problem(body: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_request(json.dumps(body).encode(), None)


@pytest.mark.parametrize(
    ("body", "tail", "message"),
    [
        (one(shape=(2,), parameters={"binary_data_size": 4}), b"\x00" * 4, "do not hold"),
        (FP32_ONE, b"XX", "not claimed"),
    ],
)
def test_malformed_binary_names_the_problem(body: object, tail: bytes, message: str) -> None:
    header = json.dumps(body).encode()
    with pytest.raises(BadRequest, match=message):
        decode_request(header + tail, str(len(header)))


@pytest.mark.parametrize(
    ("body", "header"), [(b"{", None), (b"[" * 100000 + b"]" * 100000, None), (b"{}", "99"), (b"{}", "abc")]
)
def test_unreadable_bodies(body: bytes, header: str | None) -> None:
    with pytest.raises(BadRequest, match=r"JSON|within the body"):
        decode_request(body, header)


def test_response_json_and_binary() -> None:
    probabilities = np.array([[0.25, 0.75]], np.float32)
    labels = OutputTensor("c", "BYTES", [1, 1], elements=[b"0.75:1:dog"])
    body, header = encode_response(
        "m", "1", "id-1", [OutputTensor("p", "FP32", [1, 2], array=probabilities), labels]
    )
    assert header is None
    document = json.loads(body)
    assert document["id"] == "id-1"
    assert document["outputs"][0]["data"] == [0.25, 0.75]
    assert document["outputs"][1]["data"] == ["0.75:1:dog"]
    binary = OutputTensor("p", "FP32", [1, 2], array=probabilities, binary=True)
    body, header = encode_response(
        "m", "1", None, [binary, OutputTensor("c", "BYTES", [1, 1], elements=[b"x"], binary=True)]
    )
    assert header is not None
    document = json.loads(body[:header])
    assert "id" not in document
    assert document["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert np.array_equal(np.frombuffer(body[header : header + 8], "<f4"), probabilities.ravel())
    assert deserialize_bytes(body[header + 8 :], "c") == [b"x"]
