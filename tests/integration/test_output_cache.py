"""Re-used answers on a real server: the output cache follows the pixels, and identical inputs in
flight share one forward pass.

``tiny_cnn`` keeps an output cache (``cache.enabled``); its images are small enough (120 x 90) that
JPEG decodes at full scale, so a PNG of the decoded pixels is the same input to the network.
``tiny_bounded`` keeps a cache of 10 kB, to hold its bound under a thousand distinct images.
``merging`` (the colour model, 1 s per forward pass) merges duplicates in flight and caches
nothing, so every identical request sent while one runs shares that one's slot.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.helpers import ServerProcess, encode, metric_value
from tests.repository import add_colour_model, add_tiny_cnn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BOUND = 10_000
PHOTO = Image.fromarray(data.chelsea()).resize((120, 90))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("cache-repository")
    add_tiny_cnn(repo, cache={"enabled": True})
    add_tiny_cnn(repo, "tiny_bounded", cache={"enabled": True, "max_bytes": BOUND})
    add_colour_model(repo, "merging", delay_s=1.0, settings={"cache": {"merge_in_flight": True}})
    process = ServerProcess(repo, grpc=True)
    process.start(tmp_path_factory.mktemp("cache-logs") / "server.log")
    yield process
    process.stop()


def predict(server: ServerProcess, model: str, image: bytes) -> httpx.Response:
    answer = httpx.post(
        f"{server.url}/v1/models/{model}/predict", files={"file": ("image", image)}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer


def metrics(server: ServerProcess) -> str:
    return httpx.get(f"{server.url}/metrics").text


def test_a_resent_or_re_encoded_photo_is_answered_from_the_cache(server: ServerProcess) -> None:
    jpeg = encode(PHOTO, "JPEG", quality=90)
    first = predict(server, "tiny_cnn", jpeg)
    assert first.headers["x-cache"] == "miss" and first.json()["cached"] is False
    again = predict(server, "tiny_cnn", jpeg)
    assert again.headers["x-cache"] == "hit" and again.json()["cached"] is True
    assert again.json()["timings_ms"]["queue"] == 0 and again.json()["timings_ms"]["inference"] == 0

    # The same pixels as PNG: other bytes, the same input to the network: the same entry.
    png = encode(Image.open(io.BytesIO(jpeg)).convert("RGB"), "PNG")
    assert png != jpeg
    as_png = predict(server, "tiny_cnn", png)
    assert as_png.headers["x-cache"] == "hit"
    assert as_png.json()["predictions"] == first.json()["predictions"]

    # Another JPEG quality is other pixels: it follows them (a miss, then its own entry).
    coarser = predict(server, "tiny_cnn", encode(PHOTO, "JPEG", quality=50))
    assert coarser.headers["x-cache"] == "miss"

    labels = {"model": "tiny_cnn", "version": "1"}
    text = metrics(server)
    assert metric_value(text, "inference_engine_cache_lookups_total", **labels, result="hit") == 2
    assert metric_value(text, "inference_engine_cache_lookups_total", **labels, result="miss") == 2
    assert metric_value(text, "inference_engine_cache_entries", **labels) == 2


def test_the_v2_route_uses_the_same_cache(server: ServerProcess) -> None:
    image = encode(PHOTO.rotate(90, expand=True), "PNG")
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(image).decode()],
                }
            ]
        }
    )
    answers = [
        httpx.post(f"{server.url}/v2/models/tiny_cnn/infer", content=body, timeout=30) for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["x-cache"] for a in answers] == ["miss", "hit"]
    assert answers[0].json()["outputs"] == answers[1].json()["outputs"]


def test_grpc_answers_say_whether_they_came_from_the_cache(server: ServerProcess) -> None:
    import grpc

    from inference_engine.rpc.proto import grpc_predict_v2_pb2 as pb
    from inference_engine.rpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    image = encode(PHOTO.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG")
    request = pb.ModelInferRequest(
        model_name="tiny_cnn",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[len(image).to_bytes(4, "little") + image],
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = GRPCInferenceServiceStub(channel)
        seen = [dict(stub.ModelInfer.with_call(request)[1].trailing_metadata())["x-cache"] for _ in range(2)]
    assert seen == ["miss", "hit"]


def test_the_cache_holds_its_bound_under_a_thousand_distinct_images(server: ServerProcess) -> None:
    rng = np.random.default_rng(7)
    images = [encode(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "PNG") for _ in range(1000)]

    async def send_all() -> list[int]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            gate = asyncio.Semaphore(16)

            async def one(image: bytes) -> int:
                async with gate:
                    answer = await client.post(
                        "/v1/models/tiny_bounded/predict", files={"file": ("i", image)}
                    )
                    return answer.status_code

            return await asyncio.gather(*(one(image) for image in images))

    assert set(asyncio.run(send_all())) == {200}
    labels = {"model": "tiny_bounded", "version": "1"}
    text = metrics(server)
    held = metric_value(text, "inference_engine_cache_bytes", **labels)
    entries = metric_value(text, "inference_engine_cache_entries", **labels)
    assert 0 < held <= BOUND
    assert entries == BOUND // (4 * 4 + 200)  # four float32 probabilities plus the entry's overhead
    assert metric_value(text, "inference_engine_cache_evictions_total", **labels) == 1000 - entries


def test_identical_requests_in_flight_share_one_forward_pass(server: ServerProcess) -> None:
    green = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")
    labels = {"model": "merging", "version": "1"}
    before = metrics(server)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/v1/models/merging/predict", files={"file": ("g", green)}) for _ in range(32))
            )

    answers = asyncio.run(burst())
    assert [a.status_code for a in answers] == [200] * 32
    assert {a.json()["predictions"][0]["label"] for a in answers} == {"green"}
    after = metrics(server)

    def delta(name: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("inference_engine_batch_size_sum") == 1  # one input slot in one forward pass
    assert delta("inference_engine_batch_size_count") == 1
    assert delta("inference_engine_merged_inputs_total") == 31
    assert "x-cache" not in answers[0].headers  # merging alone keeps no cache to report on
