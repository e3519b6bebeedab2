"""Deadline-aware admission on a real server: a request the queue ahead would make late is refused
at once, with a Retry-After, and costs no forward pass.

``slowish`` (the colour model, 100 ms per forward pass, batches of at most 4) is loaded with 40
requests that have all the time they need: ten passes, about a second of work. A request that
then arrives with a 200 ms deadline cannot be answered in time; predictive admission refuses it
before its body is read, instead of queueing it to time out with 504 and letting it hold a slot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.helpers import ServerProcess, encode, metric_value
from tests.repository import add_colour_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PASS_S = 0.1
GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")
PNG = {"content-type": "image/png"}
LOAD = 40
V2_IMAGE = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(GREEN).decode()]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("admission-repository")
    add_colour_model(repo, "slowish", delay_s=PASS_S, settings={"max_batch_size": 4, "max_queue_size": 64})
    add_colour_model(
        repo, "patient", delay_s=PASS_S, settings={"max_batch_size": 4, "admission": "queue_only"}
    )
    process = ServerProcess(repo, grpc=True)
    process.start(tmp_path_factory.mktemp("admission-logs") / "server.log")
    yield process
    process.stop()


def client_for(server: ServerProcess) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=64))


def metrics(server: ServerProcess) -> str:
    return httpx.get(f"{server.url}/metrics").text


async def load(client: httpx.AsyncClient, model: str, count: int) -> list[asyncio.Task[httpx.Response]]:
    tasks = [
        asyncio.create_task(client.post(f"/v1/models/{model}/predict", content=GREEN, headers=PNG))
        for _ in range(count)
    ]
    # Wait until the backlog is really there (on a loaded machine 40 connections take a while):
    # half of it queued is half a second of passes ahead, more than any probe's deadline.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        depth = metric_value((await client.get("/metrics")).text, "inference_engine_queue_depth", model=model)
        if depth >= count // 2:
            break
        await asyncio.sleep(0.02)
    return tasks


async def test_a_deadline_shorter_than_the_queue_ahead_is_refused_at_once(server: ServerProcess) -> None:
    before = metrics(server)
    async with client_for(server) as client:
        backlog = await load(client, "slowish", LOAD)
        probes, refused_in = [], []
        for _ in range(5):  # several: one on a 2-core machine under load may meet a GC pause
            started = time.monotonic()
            probes.append(
                await client.post(
                    "/v1/models/slowish/predict",
                    content=GREEN,
                    headers={**PNG, "X-Request-Timeout-Ms": "200"},
                )
            )
            refused_in.append(time.monotonic() - started)
        probe = probes[0]
        v2 = await client.post(
            "/v2/models/slowish/infer",
            content=json.dumps({"parameters": {"timeout": 200_000}, "inputs": [V2_IMAGE]}),  # microseconds
        )
        generous = await client.post(
            "/v1/models/slowish/predict", content=GREEN, headers={**PNG, "X-Request-Timeout-Ms": "15000"}
        )
        answers = await asyncio.gather(*backlog)
    assert [p.status_code for p in probes] == [503] * 5, probe.text
    assert probe.json()["error"]["type"] == "deadline_unmeetable"
    assert int(probe.headers["retry-after"]) >= 1
    assert sorted(refused_in)[2] < 0.05, f"refused after {[round(s * 1000) for s in refused_in]} ms"
    assert v2.status_code == 503, v2.text
    assert "deadline" in v2.json()["error"]  # the Open Inference Protocol's error shape
    assert generous.status_code == 200
    assert all(answer.status_code == 200 for answer in answers)
    after = metrics(server)
    labels = {"model": "slowish", "version": "1"}
    # The refused probe cost no forward pass: the batches ran exactly the accepted inputs.
    ran = metric_value(after, "inference_engine_batch_size_sum", **labels) - metric_value(
        before, "inference_engine_batch_size_sum", **labels
    )
    assert ran == LOAD + 1  # the backlog and the generous request; no probe
    refused = metric_value(after, "inference_engine_admission_refusals_total", **labels, reason="deadline")
    assert refused >= 6  # the five probes and the V2 one
    assert metric_value(after, "inference_engine_admission_prediction_error_seconds_count", **labels) >= LOAD


async def test_queue_only_admission_lets_it_queue_and_time_out(server: ServerProcess) -> None:
    async with client_for(server) as client:
        backlog = await load(client, "patient", LOAD)
        probe = await client.post(
            "/v1/models/patient/predict", content=GREEN, headers={**PNG, "X-Request-Timeout-Ms": "200"}
        )
        await asyncio.gather(*backlog)
    assert probe.status_code == 504
    assert probe.json()["error"]["type"] == "deadline_exceeded"


async def test_a_grpc_deadline_is_judged_the_same_way(server: ServerProcess) -> None:
    import grpc

    from inference_engine.rpc.proto import grpc_predict_v2_pb2 as pb
    from inference_engine.rpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    request = pb.ModelInferRequest(
        model_name="slowish",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[len(GREEN).to_bytes(4, "little") + GREEN],
    )
    async with (
        client_for(server) as client,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        backlog = await load(client, "slowish", LOAD)
        stub = GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ModelInfer(request, timeout=0.2)
        # The same from the request's own V2 timeout parameter (microseconds), with no gRPC deadline.
        request.parameters["timeout"].int64_param = 200_000
        with pytest.raises(grpc.aio.AioRpcError) as by_parameter:
            await stub.ModelInfer(request)
        await asyncio.gather(*backlog)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "deadline" in (refused.value.details() or "")
    assert by_parameter.value.code() is grpc.StatusCode.UNAVAILABLE
