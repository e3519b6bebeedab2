"""The Open Inference Protocol V2 over gRPC, driven by Triton's own gRPC client (and the raw
generated stub where a test must see what no client shows: trailing metadata, typed contents)
against a real server process that serves REST beside it.
"""

from __future__ import annotations

import concurrent.futures
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from inference_engine.access import hash_key
from inference_engine.rpc.proto import grpc_predict_v2_pb2 as pb
from inference_engine.rpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from tests.helpers import ServerProcess, cat_jpeg, encode, metric_value
from tests.repository import add_colour_model, add_colour_text_model, add_default_model

USER, LIMITED, ADMIN = "user-key", "limited-key", "admin-key"
AS_USER = {"authorization": f"Bearer {USER}"}
CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}
RED = encode(np.full((32, 32, 3), (250, 10, 10), np.uint8), "PNG")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("grpc")
    add_default_model(repo)
    add_colour_text_model(repo, "colours")
    # Slow, two inputs a batch: what queues behind a running forward pass runs together.
    add_colour_model(repo, "paired", delay_s=0.5, settings={"max_batch_size": 2})
    # One forward pass takes 0.3 s and two inputs may wait: overload and deadlines.
    # queue_only: its calls reach their deadline in the queue (predictive admission would refuse
    # them at once: tests/integration/test_admission.py).
    narrow = {"max_batch_size": 1, "max_queue_size": 2, "admission": "queue_only"}
    add_colour_model(repo, "narrow", delay_s=0.3, settings=narrow)
    limited = hash_key(LIMITED)
    process = ServerProcess(
        repo,
        grpc=True,
        env={
            "IE_AUTH__ENABLED": "true",
            "IE_AUTH__API_KEY_HASHES": f'["{hash_key(USER)}", "{limited}"]',
            "IE_AUTH__ADMIN_KEY_HASHES": f'["{hash_key(ADMIN)}"]',
            "IE_RATE_LIMIT__ENABLED": "true",
            "IE_RATE_LIMIT__RATE": "1000",
            "IE_RATE_LIMIT__BURST": "1000",
            "IE_RATE_LIMIT__OVERRIDES": f'{{"{limited}": {{"rate": 0.2, "burst": 2}}}}',
            "IE_SERVER__MODEL_CONTROL": "true",
        },
        headers=AS_USER,
    )
    process.start(tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    process.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    connection = triton.InferenceServerClient(server.grpc_target)
    yield connection
    connection.close()


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield GRPCInferenceServiceStub(channel)


def images(*encoded: bytes) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(encoded)], "BYTES")
    tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_))
    return tensor


def code_of(call: Any) -> grpc.StatusCode:
    """The status of a call made with tritonclient: OK, or the code of its exception."""
    try:
        call()
    except InferenceServerException as exc:
        return getattr(grpc.StatusCode, str(exc.status()).removeprefix("StatusCode."))
    return grpc.StatusCode.OK


# --- Triton's client, unchanged ---------------------------------------------------------------


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()  # probes need no key
    metadata = client.get_server_metadata(headers=AS_USER)
    assert metadata.name == "inference-engine"
    assert {"classification", "model_repository"} <= set(metadata.extensions)
    assert "binary_tensor_data" not in metadata.extensions  # REST's; gRPC is binary anyway
    model = client.get_model_metadata("efficientnet_lite0", headers=AS_USER)
    assert list(model.versions) == ["1"] and model.platform == "onnxruntime_onnx"
    assert {i.name: list(i.shape) for i in model.inputs} == {"image": [-1], "pixel_values": [-1, 3, 224, 224]}
    assert [(o.name, o.datatype, list(o.shape)) for o in model.outputs] == [
        ("probabilities", "FP32", [-1, 1000])
    ]
    assert client.is_model_ready("efficientnet_lite0", headers=AS_USER)
    assert client.is_model_ready("efficientnet_lite0", "1", headers=AS_USER)


def test_two_jpegs_classified_top_three(client: triton.InferenceServerClient) -> None:
    wanted = triton.InferRequestedOutput("probabilities", class_count=3)
    result = client.infer(
        "efficientnet_lite0",
        [images(cat_jpeg(), cat_jpeg())],
        outputs=[wanted],
        headers=AS_USER,
        request_id="r-1",
    )
    rows = result.as_numpy("probabilities")
    assert rows.shape == (2, 3)
    for row in rows:
        entries = [entry.decode().split(":", 2) for entry in row]
        assert entries[0][2] in CAT_CLASSES
        scores = [float(score) for score, _, _ in entries]
        assert scores == sorted(scores, reverse=True)
    response = result.get_response()
    assert response.id == "r-1" and response.model_version == "1"


def test_pixel_values_answer_as_over_rest(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    pixels = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    tensor = triton.InferInput("pixel_values", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    over_grpc = client.infer("efficientnet_lite0", [tensor], headers=AS_USER).as_numpy("probabilities")

    rest = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    http_tensor = triton_http.InferInput("pixel_values", list(pixels.shape), "FP32")
    http_tensor.set_data_from_numpy(pixels, binary_data=True)
    # (a copy: tritonclient.http adds its own headers to the dict it is given)
    over_rest = rest.infer("efficientnet_lite0", [http_tensor], headers=dict(AS_USER)).as_numpy(
        "probabilities"
    )
    rest.close()

    assert over_grpc.shape == (2, 1000)
    np.testing.assert_allclose(over_grpc, over_rest, atol=1e-6)


def test_text_embeddings(server: ServerProcess, client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([b"red", b"blue"], dtype=np.object_))
    wanted = triton.InferRequestedOutput("embeddings")
    vectors = client.infer("colours", [tensor], outputs=[wanted], headers=AS_USER).as_numpy("embeddings")
    rest = httpx.post(
        f"{server.url}/v2/models/colours/infer",
        json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["red", "blue"]}]},
        headers=AS_USER,
    ).json()
    assert vectors.shape[0] == 2
    np.testing.assert_allclose(vectors.reshape(-1), rest["outputs"][0]["data"], atol=1e-6)


def test_errors_map_to_grpc_codes_with_rest_messages(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no_such_model", [images(cat_jpeg())], headers=AS_USER)
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert "no_such_model" in unknown.value.message()

    with pytest.raises(InferenceServerException) as bad:
        client.infer("efficientnet_lite0", [images(b"not an image at all")], headers=AS_USER)
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT"
    rest = httpx.post(
        f"{server.url}/v1/models/efficientnet_lite0/predict",
        files={"file": ("x.jpg", b"not an image at all", "image/jpeg")},
        headers=AS_USER,
    )
    assert rest.status_code == 415
    assert bad.value.message() == rest.json()["error"]["message"]  # the same words

    with pytest.raises(InferenceServerException) as unauthenticated:
        client.infer("efficientnet_lite0", [images(cat_jpeg())])
    assert unauthenticated.value.status() == "StatusCode.UNAUTHENTICATED"
    assert client.get_model_metadata("efficientnet_lite0", headers={"x-api-key": USER}).name  # either header

    with pytest.raises(InferenceServerException) as forbidden:
        client.unload_model("colours", headers=AS_USER)
    assert forbidden.value.status() == "StatusCode.PERMISSION_DENIED"


def test_deadline_shorter_than_a_forward_pass(
    server: ServerProcess, client: triton.InferenceServerClient
) -> None:
    with pytest.raises(InferenceServerException) as late:
        client.infer("narrow", [images(RED)], headers=AS_USER, client_timeout=0.1)
    assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"

    def logged() -> bool:
        return '"grpc_status": "DEADLINE_EXCEEDED"' in server.log()

    deadline = time.monotonic() + 10
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert logged(), "the server did not see the call end at its deadline"


def test_repository_calls(client: triton.InferenceServerClient) -> None:
    admin = {"x-api-key": ADMIN}
    index = {(m.name, m.state) for m in client.get_model_repository_index(headers=admin).models}
    assert ("efficientnet_lite0", "READY") in index and ("colours", "READY") in index
    client.load_model("colours", headers=admin)  # nothing changed: reloads nothing, still ready
    assert client.is_model_ready("colours", headers=admin)


def test_statistics_as_over_rest(server: ServerProcess, client: triton.InferenceServerClient) -> None:
    client.infer("efficientnet_lite0", [images(cat_jpeg())], headers=AS_USER)
    over_grpc = client.get_inference_statistics("efficientnet_lite0", headers=AS_USER, as_json=True)
    over_rest = httpx.get(f"{server.url}/v2/models/efficientnet_lite0/stats", headers=AS_USER).json()
    grpc_entry, rest_entry = over_grpc["model_stats"][0], over_rest["model_stats"][0]
    assert grpc_entry["name"] == "efficientnet_lite0" and grpc_entry["version"] == "1"
    assert int(grpc_entry["inference_count"]) == rest_entry["inference_count"] >= 1
    assert (
        int(grpc_entry["inference_stats"]["success"]["count"])
        == rest_entry["inference_stats"]["success"]["count"]
    )
    everything = client.get_inference_statistics(headers=AS_USER).model_stats
    assert {entry.name for entry in everything} >= {"efficientnet_lite0", "colours", "paired", "narrow"}
    assert (
        code_of(lambda: client.get_inference_statistics("no_such_model", headers=AS_USER))
        is grpc.StatusCode.NOT_FOUND
    )


def test_stream_answers_every_request(client: triton.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=AS_USER)
    try:
        for n in range(6):
            client.async_stream_infer("efficientnet_lite0", [images(cat_jpeg())], request_id=f"s-{n}")
        client.async_stream_infer("efficientnet_lite0", [images(b"garbage")], request_id="s-bad")
        got = [answers.get(timeout=60) for _ in range(7)]
    finally:
        client.stop_stream()
    ok = {result.get_response().id for result, error in got if error is None}
    failed = [error for _, error in got if error is not None]
    assert ok == {f"s-{n}" for n in range(6)}
    assert len(failed) == 1 and "not a supported image" in failed[0].message()


def test_grpc_and_rest_share_one_batch(server: ServerProcess, client: triton.InferenceServerClient) -> None:
    def batches() -> tuple[float, float]:
        """Forward passes of ``paired`` with one input, and with two."""
        text = httpx.get(f"{server.url}/metrics").text
        ones, twos = (
            metric_value(text, "inference_engine_batch_size_bucket", model="paired", le=le)
            for le in ("1.0", "2.0")
        )
        return ones, twos - ones

    before = batches()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(client.infer, "paired", [images(RED)], headers=AS_USER)
        time.sleep(0.2)  # its forward pass runs; the next two queue behind it
        over_grpc = pool.submit(client.infer, "paired", [images(RED)], headers=AS_USER)
        over_rest = pool.submit(
            httpx.post,
            f"{server.url}/v1/models/paired/predict",
            files={"file": ("red.png", RED, "image/png")},
            headers=AS_USER,
            timeout=30,
        )
        assert first.result(timeout=30).as_numpy("probabilities").shape[0] == 1
        assert over_grpc.result(timeout=30).as_numpy("probabilities").shape[0] == 1
        assert over_rest.result(timeout=30).status_code == 200
    assert batches() == (before[0] + 1, before[1] + 1)  # the first alone, then one pass of two


def test_metrics_carry_the_protocol(server: ServerProcess, client: triton.InferenceServerClient) -> None:
    client.infer("efficientnet_lite0", [images(cat_jpeg())], headers=AS_USER)
    text = httpx.get(f"{server.url}/metrics").text
    route = "/inference.GRPCInferenceService/ModelInfer"
    assert (
        metric_value(text, "inference_engine_requests_total", protocol="grpc", route=route, status="200") >= 1
    )
    assert metric_value(text, "inference_engine_requests_total", protocol="grpc", status="404") >= 1
    assert metric_value(text, "inference_engine_requests_total", protocol="http", status="200") >= 1


# --- what no client shows: metadata, typed contents, health, reflection ------------------------


def test_typed_contents_are_accepted(stub: GRPCInferenceServiceStub) -> None:
    pixels = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    typed = pb.ModelInferRequest(
        model_name="efficientnet_lite0",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="pixel_values",
                datatype="FP32",
                shape=pixels.shape,
                contents=pb.InferTensorContents(fp32_contents=pixels.reshape(-1)),
            )
        ],
    )
    raw = pb.ModelInferRequest(
        model_name="efficientnet_lite0",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="pixel_values", datatype="FP32", shape=pixels.shape)
        ],
        raw_input_contents=[pixels.tobytes()],
    )
    metadata = (("authorization", f"Bearer {USER}"),)
    answers = [stub.ModelInfer(request, metadata=metadata) for request in (typed, raw)]
    arrays = [np.frombuffer(a.raw_output_contents[0], "<f4") for a in answers]
    np.testing.assert_allclose(arrays[0], arrays[1], atol=1e-6)

    images_typed = pb.ModelInferRequest(
        model_name="efficientnet_lite0",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="image",
                datatype="BYTES",
                shape=[1],
                contents=pb.InferTensorContents(bytes_contents=[cat_jpeg()]),
            )
        ],
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(
                name="probabilities", parameters={"classification": pb.InferParameter(int64_param=1)}
            )
        ],
    )
    answer = stub.ModelInfer(images_typed, metadata=metadata)
    assert answer.outputs[0].datatype == "BYTES"
    assert answer.raw_output_contents[0][4:].decode().split(":", 2)[2] in CAT_CLASSES


def test_metadata_request_id_version_and_shape_errors(stub: GRPCInferenceServiceStub) -> None:
    request = pb.ModelInferRequest(
        model_name="efficientnet_lite0",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[len(cat_jpeg()).to_bytes(4, "little") + cat_jpeg()],
    )
    _, call = stub.ModelInfer.with_call(
        request, metadata=(("x-api-key", USER), ("x-request-id", "trace-me-42"))
    )
    trailing = dict(call.trailing_metadata())
    assert trailing["x-request-id"] == "trace-me-42" and trailing["x-model-version"] == "1"
    assert int(trailing["x-ratelimit-limit"]) == 1000

    wrong = pb.ModelInferRequest(
        model_name="efficientnet_lite0",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="pixel_values", datatype="FP32", shape=[1, 3, 224, 224]
            )
        ],
        raw_input_contents=[b"\0" * 12],
    )
    with pytest.raises(grpc.RpcError) as short:
        stub.ModelInfer(wrong, metadata=(("x-api-key", USER),))
    assert short.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "12 bytes do not hold 150528 FP32 elements" in short.value.details()


def test_rate_limited_with_retry_information(stub: GRPCInferenceServiceStub) -> None:
    metadata = (("x-api-key", LIMITED),)
    request = pb.ServerMetadataRequest()
    codes = []
    error: grpc.RpcError | None = None
    for _ in range(4):
        try:
            stub.ServerMetadata(request, metadata=metadata)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
            error = exc
    assert codes[:2] == [grpc.StatusCode.OK] * 2
    assert codes[2:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    assert error is not None
    trailing = dict(error.trailing_metadata())
    assert int(trailing["retry-after"]) >= 1
    assert int(trailing["grpc-retry-pushback-ms"]) == int(trailing["retry-after"]) * 1000
    status = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and info.retry_delay.seconds == int(trailing["retry-after"])


def test_health_service_and_reflection(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService", "efficientnet_lite0"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no_such_model"))
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        listed = next(iter(reflection.ServerReflectionInfo(iter([ask]))))
        names = {s.name for s in listed.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_overload_answers_every_call(client: triton.InferenceServerClient) -> None:
    def one(key: str) -> grpc.StatusCode:
        return code_of(lambda: client.infer("narrow", [images(RED)], headers={"x-api-key": key}))

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        codes = Counter(pool.map(one, [USER] * 40 + [LIMITED] * 8, timeout=120))
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert codes[grpc.StatusCode.OK] >= 1
    assert codes[grpc.StatusCode.UNAVAILABLE] >= 1  # the queue of two was full
    assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= 1  # the limited key ran out


# --- the drain ---------------------------------------------------------------------------------


def test_sigterm_answers_calls_and_streams_in_progress(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    add_colour_model(repo, "slow", delay_s=0.4, settings={"max_batch_size": 1})
    process = ServerProcess(repo, grpc=True).start(tmp_path / "server.log")
    client = triton.InferenceServerClient(process.grpc_target)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for n in range(3):
        client.async_stream_infer("slow", [images(RED)], request_id=f"s-{n}")
    results: dict[int, Any] = {}

    def unary(n: int) -> None:
        results[n] = code_of(lambda: client.infer("slow", [images(RED)]))

    threads = [threading.Thread(target=unary, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # all six queued behind 0.4 s forward passes
    assert process.process is not None
    process.process.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join(30)
    streamed = [answers.get(timeout=30) for _ in range(3)]
    client.stop_stream()
    client.close()

    assert process.process.wait(30) == 0
    assert set(results.values()) == {grpc.StatusCode.OK}
    assert [error for _, error in streamed] == [None] * 3
    assert "gRPC stopped" in process.stop_log()


def test_a_taken_grpc_port_stops_start_up(server: ServerProcess, tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    add_colour_model(repo, "colour")
    second = ServerProcess(repo, grpc=True, grpc_port=server.grpc_port)
    with pytest.raises(RuntimeError, match="server exited") as failed:
        second.start(tmp_path / "server.log", timeout=60)
    assert f"grpc.port: cannot listen on 127.0.0.1:{server.grpc_port}" in str(failed.value)
    assert second.stop() != 0


def test_messages_past_the_body_limit_are_refused(stub: GRPCInferenceServiceStub) -> None:
    """grpc.max_message_bytes defaults to server.max_body_bytes (5 MB in the test config)."""
    too_big = pb.ModelInferRequest(
        model_name="efficientnet_lite0",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[b"\0" * 5_100_000],
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(too_big, metadata=(("x-api-key", USER),))
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_an_idle_stream_does_not_hold_the_stop(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    add_colour_model(repo, "colour")
    process = ServerProcess(repo, grpc=True, env={"IE_SERVER__DRAIN_TIMEOUT_S": "10"})
    process.start(tmp_path / "server.log")
    client = triton.InferenceServerClient(process.grpc_target)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("colour", [images(RED)], request_id="only")
    assert answers.get(timeout=30)[1] is None  # answered; the stream stays open, idle
    assert process.process is not None
    started = time.monotonic()
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(30) == 0
    assert time.monotonic() - started < 5  # not the 10 s drain budget
    client.stop_stream()
    client.close()


def test_calls_cut_off_by_the_drain_budget_count_as_server_errors(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    add_colour_model(repo, "slow", delay_s=0.5, settings={"max_batch_size": 1})
    process = ServerProcess(repo, grpc=True, env={"IE_SERVER__DRAIN_TIMEOUT_S": "1"})
    process.start(tmp_path / "server.log")
    client = triton.InferenceServerClient(process.grpc_target)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        calls = [pool.submit(code_of, lambda: client.infer("slow", [images(RED)])) for _ in range(6)]
        time.sleep(0.3)  # six queued behind 0.5 s passes: about two fit in the 1 s budget
        assert process.process is not None
        process.process.send_signal(signal.SIGTERM)
        codes = Counter(call.result(timeout=30) for call in calls)
    client.close()
    assert process.process.wait(30) == 0
    assert codes[grpc.StatusCode.OK] >= 1 and codes[grpc.StatusCode.UNAVAILABLE] >= 1
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
    lines = [line for line in process.stop_log().splitlines() if '"error": "drain_timeout"' in line]
    assert lines and all('"status": 500' in line for line in lines)
