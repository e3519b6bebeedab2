"""Open Inference Protocol V2, driven by Triton's own Python client against a real server."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from skimage import data
from tritonclient.utils import InferenceServerException

from inference_engine.models.base import PreprocessingConfig
from inference_engine.models.transforms import to_chw_array
from tests.helpers import ServerProcess, cat_jpeg, encode
from tests.repository import add_colour_model, add_colour_text_model, add_default_model

COLOURS = {
    "red": encode(np.full((32, 32, 3), (250, 10, 10), np.uint8), "PNG"),
    "green": encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG"),
    "blue": encode(np.full((32, 32, 3), (10, 10, 250), np.uint8), "PNG"),
}
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("v2")
    add_default_model(repo)
    add_colour_text_model(repo, "colours")
    add_colour_model(repo, "slow", delay_s=0.4, settings={"max_batch_size": 8, "max_batch_delay_ms": 100})
    process = ServerProcess(repo)
    process.start(tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    process.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60)
    yield connection
    connection.close()


def text_of(value: bytes | str) -> str:
    """BYTES outputs come back as ``bytes`` in binary mode and ``str`` in JSON mode."""
    return value if isinstance(value, str) else value.decode()


def image_input(images: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    values = images if binary else [base64.b64encode(i) for i in images]
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    return tensor


def test_server_and_model_metadata_and_readiness(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "inference-engine"
    assert {"binary_tensor_data", "classification", "statistics"} <= set(metadata["extensions"])
    model = client.get_model_metadata("efficientnet_lite0")
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert {i["name"]: i["shape"] for i in model["inputs"]} == {
        "image": [-1],
        "pixel_values": [-1, 3, 224, 224],
    }
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}]
    assert client.is_model_ready("efficientnet_lite0")
    assert client.is_model_ready("efficientnet_lite0", model_version="1")
    colours = client.get_model_metadata("colours")
    assert {i["name"] for i in colours["inputs"]} == {"image", "text"}
    assert {o["name"] for o in colours["outputs"]} == {"probabilities", "embeddings"}


@pytest.mark.parametrize("binary", [True, False])
def test_jpeg_bytes_give_probabilities(client: triton.InferenceServerClient, binary: bool) -> None:
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer("efficientnet_lite0", [image_input([cat_jpeg()], binary)], outputs=[output])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (1, 1000) and probabilities.dtype == np.float32
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert int(probabilities.argmax()) in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    assert result.get_response()["model_version"] == "1"


def test_classification_extension(client: triton.InferenceServerClient) -> None:
    output = triton.InferRequestedOutput("probabilities", binary_data=True, class_count=3)
    result = client.infer("efficientnet_lite0", [image_input([cat_jpeg(), cat_jpeg()])], outputs=[output])
    strings = result.as_numpy("probabilities")
    assert strings.shape == (2, 3)
    score, index, label = text_of(strings[0][0]).split(":", 2)
    assert label in CAT_CLASSES and 0 < float(score) <= 1 and int(index) in (281, 282, 285)
    scores = [float(text_of(s).split(":")[0]) for s in strings[0]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("binary", [True, False])
def test_fp32_tensors(client: triton.InferenceServerClient, binary: bool) -> None:
    pre = PreprocessingConfig()
    pixels = np.stack(
        [
            to_chw_array(Image.fromarray(data.chelsea()), pre),
            to_chw_array(Image.fromarray(data.coffee()), pre),
        ]
    )
    tensor = triton.InferInput("pixel_values", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    output = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=1)
    result = client.infer("efficientnet_lite0", [tensor], outputs=[output])
    top = [text_of(row[0]).split(":", 2)[2] for row in result.as_numpy("probabilities")]
    assert top[0] in CAT_CLASSES and top[1] == "espresso"


def test_request_id_and_default_outputs(client: triton.InferenceServerClient) -> None:
    result = client.infer("colours", [image_input([COLOURS["red"], COLOURS["blue"]])], request_id="req-7")
    response = result.get_response()
    assert response["id"] == "req-7"
    assert {o["name"] for o in response["outputs"]} == {"probabilities", "embeddings"}
    assert list(result.as_numpy("probabilities").argmax(axis=1)) == [0, 2]
    embeddings = result.as_numpy("embeddings")
    assert embeddings.shape == (2, 3)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_text_rows_give_embeddings(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([b"green", b"red"], dtype=np.object_), binary_data=False)
    result = client.infer("colours", [tensor], outputs=[triton.InferRequestedOutput("embeddings")])
    assert list(result.as_numpy("embeddings").argmax(axis=1)) == [1, 0]


def test_rows_of_one_request_share_forward_passes_with_single_requests(
    client: triton.InferenceServerClient, server: ServerProcess
) -> None:
    """A 4-image request and three single-image requests queued together run as one batch of 7."""

    def executions_by_size() -> dict[int, int]:
        stats = client.get_inference_statistics("slow")["model_stats"][0]
        return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}

    before = executions_by_size()
    results: dict[str, object] = {}

    def call(key: str, images: list[bytes]) -> None:
        with triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60) as own:
            output = triton.InferRequestedOutput("probabilities", class_count=1)
            results[key] = own.infer("slow", [image_input(images)], outputs=[output]).as_numpy(
                "probabilities"
            )

    blocker = threading.Thread(target=call, args=("blocker", [COLOURS["green"]]))
    blocker.start()
    time.sleep(0.15)  # the blocker's 0.4 s forward pass is running; the next seven queue up
    rows = [COLOURS["red"], COLOURS["green"], COLOURS["blue"], COLOURS["red"]]
    threads = [threading.Thread(target=call, args=("rows", rows))]
    threads += [threading.Thread(target=call, args=(f"single{i}", [COLOURS["blue"]])) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in [blocker, *threads]:
        thread.join(30)
    labels = [text_of(row[0]).split(":", 2)[2] for row in results["rows"]]  # type: ignore[attr-defined]
    assert labels == ["red", "green", "blue", "red"]  # together and in order
    stats = client.get_inference_statistics("slow")["model_stats"][0]
    after = executions_by_size()
    assert after.get(7, 0) - before.get(7, 0) == 1, after
    assert stats["inference_count"] >= 8 and stats["execution_count"] >= 2
    assert stats["inference_stats"]["success"]["count"] >= 5
    assert stats["inference_stats"]["queue"]["ns"] > 0


def test_errors_use_the_protocol_shape(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("nope", [image_input([cat_jpeg()])])
    assert unknown.value.status() == "404" and "nope" in unknown.value.message()
    with pytest.raises(InferenceServerException) as version:
        client.get_model_metadata("efficientnet_lite0", model_version="9")
    assert version.value.status() == "404"
    wrong = np.zeros((1, 3, 100, 100), np.float32)
    tensor = triton.InferInput("pixel_values", list(wrong.shape), "FP32")
    tensor.set_data_from_numpy(wrong)
    with pytest.raises(InferenceServerException) as shape:
        client.infer("efficientnet_lite0", [tensor])
    assert shape.value.status() == "422" and "[3, 224, 224]" in shape.value.message()
    with httpx.Client(base_url=server.url) as http:
        bad = http.post("/v2/models/efficientnet_lite0/infer", content=b"{")
        assert bad.status_code == 400 and set(bad.json()) == {"error"}
        assert isinstance(bad.json()["error"], str)


def one(name: str, datatype: str, shape: list[int], **fields: object) -> dict[str, object]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, **fields}]}


@pytest.mark.parametrize(
    ("body", "binary", "message"),
    [
        ({"inputs": []}, False, "non-empty list"),
        (one("image", "BYTES", [1]), False, "neither 'data'"),
        (one("image", "NOPE", [1], data=["x"]), False, "unknown datatype"),
        (one("image", "BYTES", [2], data=["AAAA"]), False, "do not fill"),
        (one("image", "BYTES", [1], data=["%%"]), False, "base64"),
        (one("image", "BYTES", [-1], data=["x"]), False, "negative"),
        (one("p", "FP32", [1, 2], data=[1, "a"]), False, "FP32 values"),
        (one("p", "FP32", [2], data=[1, 2]), False, "[N, 3, H, W]"),
        (one("p", "INT32", [1], data=[1]), False, "not an image"),
        (
            {**one("image", "BYTES", [1], data=["AAAA"]), "outputs": [{"name": "logits"}]},
            False,
            "unknown output",
        ),
        (one("image", "BYTES", [1], parameters={"binary_data_size": 99}), True, "does not fit"),
    ],
)
def test_malformed_requests_are_400(
    server: ServerProcess, body: dict[str, object], binary: bool, message: str
) -> None:
    payload = json.dumps(body).encode()
    headers = {"Inference-Header-Content-Length": str(len(payload))} if binary else {}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        response = http.post("/v2/models/efficientnet_lite0/infer", content=payload, headers=headers)
        assert response.status_code in (400, 422), response.text
        assert message in response.json()["error"]
        assert http.get("/v2/health/ready").status_code == 200
