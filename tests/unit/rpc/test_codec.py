"""ModelInferRequest -> the V2 request REST decodes to, and the answer back, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from inference_engine.answers import ModelMetadata, Rows, TensorSpec
from inference_engine.errors import BadRequest
from inference_engine.rpc import codec
from inference_engine.rpc.proto import grpc_predict_v2_pb2 as pb
from inference_engine.v2codec import RequestedOutput, output_tensors, serialize_bytes, service_arguments

Input = pb.ModelInferRequest.InferInputTensor


def request(*inputs: Input, raw: list[bytes] | None = None, **fields: object) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="m", inputs=inputs, raw_input_contents=raw or [], **fields)


def test_raw_bytes_are_images_as_they_are() -> None:
    decoded = codec.infer_request(
        request(Input(name="image", datatype="BYTES", shape=[2]), raw=[serialize_bytes([b"one", b"three"])])
    )
    assert service_arguments(decoded) == {"images": [b"one", b"three"]}


def test_typed_bytes_are_images_too_never_base64() -> None:
    contents = pb.InferTensorContents(bytes_contents=[b"\xff\xd8raw"])
    decoded = codec.infer_request(
        request(Input(name="image", datatype="BYTES", shape=[1], contents=contents))
    )
    assert service_arguments(decoded) == {"images": [b"\xff\xd8raw"]}


def test_text_and_pixels() -> None:
    text = pb.InferTensorContents(bytes_contents=[b"a photo", b"ein Foto"])
    decoded = codec.infer_request(request(Input(name="text", datatype="BYTES", shape=[2], contents=text)))
    assert service_arguments(decoded) == {"texts": ["a photo", "ein Foto"]}

    pixels = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    for message in (
        request(Input(name="pixel_values", datatype="FP32", shape=pixels.shape), raw=[pixels.tobytes()]),
        request(
            Input(
                name="pixel_values",
                datatype="FP32",
                shape=pixels.shape,
                contents=pb.InferTensorContents(fp32_contents=pixels.reshape(-1)),
            )
        ),
    ):
        tensors = service_arguments(codec.infer_request(message))["tensors"]
        np.testing.assert_array_equal(np.stack(tensors), pixels)


def test_request_fields_and_parameters() -> None:
    message = request(
        Input(
            name="image", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"x"])
        ),
        id="req-7",
        parameters={
            "flag": pb.InferParameter(bool_param=True),
            "n": pb.InferParameter(int64_param=3),
            "s": pb.InferParameter(string_param="v"),
            "d": pb.InferParameter(double_param=0.5),
            "u": pb.InferParameter(uint64_param=7),
            "unset": pb.InferParameter(),
        },
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(
                name="probabilities", parameters={"classification": pb.InferParameter(int64_param=2)}
            )
        ],
    )
    decoded = codec.infer_request(message)
    assert decoded.id == "req-7"
    assert decoded.parameters == {"flag": True, "n": 3, "s": "v", "d": 0.5, "u": 7, "unset": None}
    assert [(o.name, o.classification) for o in decoded.outputs or []] == [("probabilities", 2)]


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (request(), "'inputs' must be a non-empty list"),
        (request(Input(name="", datatype="BYTES", shape=[1])), "each input needs a 'name'"),
        (request(Input(name="x", datatype="FP8", shape=[1])), "unknown datatype 'FP8'"),
        (request(Input(name="x", datatype="FP32", shape=[-1]), raw=[b""]), "negative dimensions"),
        (request(Input(name="x", datatype="FP32", shape=[1])), "neither 'contents' nor raw_input_contents"),
        (
            request(
                Input(name="x", datatype="FP32", shape=[2]),
                Input(name="y", datatype="FP32", shape=[2]),
                raw=[b""],
            ),
            "raw_input_contents has 1 entries for 2 inputs",
        ),
        (
            request(
                Input(
                    name="x", datatype="FP32", shape=[1], contents=pb.InferTensorContents(fp32_contents=[1])
                ),
                raw=[b"\0" * 4],
            ),
            "not both",
        ),
        (request(Input(name="x", datatype="FP32", shape=[2]), raw=[b"\0" * 4]), "4 bytes do not hold 2 FP32"),
        (
            request(Input(name="x", datatype="FP16", shape=[1], contents=pb.InferTensorContents())),
            "FP16 must be sent in raw_input_contents",
        ),
        (
            request(
                Input(
                    name="x", datatype="FP32", shape=[3], contents=pb.InferTensorContents(fp32_contents=[1])
                )
            ),
            "1 values do not fill shape [3]",
        ),
        (
            request(
                Input(
                    name="x",
                    datatype="BYTES",
                    shape=[2],
                    contents=pb.InferTensorContents(bytes_contents=[b"a"]),
                )
            ),
            "1 elements do not fill shape [2]",
        ),
        (
            request(Input(name="x", datatype="BYTES", shape=[1]), raw=[b"\x09\0\0\0abc"]),
            "runs past the end of its data",
        ),
        (
            request(
                Input(
                    name="x", datatype="INT8", shape=[1], contents=pb.InferTensorContents(int_contents=[1000])
                )
            ),
            "data is not all INT8 values",
        ),
        (
            request(
                Input(
                    name="image",
                    datatype="BYTES",
                    shape=[1],
                    contents=pb.InferTensorContents(bytes_contents=[b"x"]),
                ),
                outputs=[
                    pb.ModelInferRequest.InferRequestedOutputTensor(
                        name="probabilities",
                        parameters={"classification": pb.InferParameter(string_param="3")},
                    )
                ],
            ),
            "'classification' must be a positive integer",
        ),
    ],
)
def test_mistakes_are_bad_requests_naming_the_tensor(message: pb.ModelInferRequest, words: str) -> None:
    with pytest.raises(BadRequest, match=None) as refused:
        codec.infer_request(message)
    assert words in refused.value.message


def rows() -> Rows:
    probabilities = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    return Rows(
        model="m",
        model_version="2",
        modality="image",
        tensors={"probabilities": probabilities},
        labels=["a", "b", "c"],
        preprocess_s=0.0,
        queue_s=0.0,
        inference_s=0.0,
        batch_sizes=[1],
    )


def test_answers_go_out_raw() -> None:
    decoded = codec.infer_request(
        request(
            Input(
                name="image",
                datatype="BYTES",
                shape=[1],
                contents=pb.InferTensorContents(bytes_contents=[b"x"]),
            ),
            id="r",
        )
    )
    answer = codec.infer_response("m", "2", decoded.id, output_tensors(decoded, rows()))
    assert (answer.model_name, answer.model_version, answer.id) == ("m", "2", "r")
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
        ("probabilities", "FP32", [1, 3])
    ]
    np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[0], "<f4"), [0.1, 0.7, 0.2])

    decoded.outputs = [RequestedOutput("probabilities", True, classification=2)]
    answer = codec.infer_response("m", "2", None, output_tensors(decoded, rows()))
    assert (
        answer.id == "" and answer.outputs[0].datatype == "BYTES" and list(answer.outputs[0].shape) == [1, 2]
    )
    assert answer.raw_output_contents[0] == serialize_bytes([b"0.700000:1:b", b"0.200000:2:c"])


def test_metadata_lists_images_then_pixels_then_texts() -> None:
    meta = ModelMetadata(
        name="m",
        version="1",
        platform="pytorch",
        loaded=True,
        tasks=frozenset({"classify"}),
        inputs=(TensorSpec("image", "BYTES", (-1,)), TensorSpec("text", "BYTES", (-1,))),
        tensor_input=TensorSpec("pixel_values", "FP32", (-1, 3, 8, 8)),
        outputs=(TensorSpec("probabilities", "FP32", (-1, 3)),),
        input_size=(3, 8, 8),
        labels_count=3,
        embedding_dimension=None,
    )
    answer = codec.metadata_response(meta)
    assert list(answer.versions) == ["1"]
    assert [(t.name, list(t.shape)) for t in answer.inputs] == [
        ("image", [-1]),
        ("pixel_values", [-1, 3, 8, 8]),
        ("text", [-1]),
    ]
