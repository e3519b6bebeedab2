"""One model, one server process, the same images over four transports: what the wire costs.

The ``@transports`` workloads (:mod:`bench.run`) start one server with its gRPC listener on a free
port and send the workload's JPEGs, at the same points, as:

* ``rest_multipart``: ``POST /predict``, ``multipart/form-data`` with the JPEG as the ``file``
  part (what a browser form or ``curl -F file=@photo.jpg`` sends);
* ``rest_jpeg``: ``POST /predict`` with the JPEG as the raw body (``image/jpeg``), the request
  every other workload of the suite sends;
* ``rest_v2_binary``: ``POST /v2/models/{name}/infer`` with Triton's binary tensor extension,
  the JPEG as a one-element ``image`` ``BYTES`` input after an ``Inference-Header-Content-Length``
  JSON header, output asked for in binary: the body ``tritonclient.http`` builds with
  ``binary_data=True`` (built here by its own ``generate_request_body``);
* ``grpc``: ``inference.GRPCInferenceService/ModelInfer``, the JPEG as an ``image`` ``BYTES``
  input in ``raw_input_contents``, the answer's ``probabilities`` in ``raw_output_contents``: what
  ``tritonclient.grpc`` sends (built here with the server's generated ``ModelInferRequest``).

Fairness. Every request is serialised once, before the run, so no client pays for JSON or
protobuf encoding per request; the three REST transports use the suite's raw HTTP/1.1 keep-alive
client (:mod:`bench.load`: writes the pre-built bytes, reads the status line and the body), gRPC a
``grpc.aio`` channel whose ``ModelInfer`` method passes bytes through (identity serialisers; the
answer is not decoded either). One closed loop (:func:`closed_loop`) drives all four: ``clients``
tasks on the suite's event loop, each with a connection of its own (one HTTP/1.1 connection; for
gRPC one channel with a local subchannel pool, so one HTTP/2 connection each, not 32 streams
multiplexed on one), sending its next request when the previous answer arrives. The windows of
the four transports are interleaved (each point runs every transport in turn, then the sweep
repeats), so drift in background load spreads over all of them. The load generator's CPU is the
whole process's (``RUSAGE_SELF``: grpcio polls on threads of its own), and the server's CPU per
answered request is read at the window edges: on a 2-core machine the client shares the cores
with the server, so both are reported.

Before measuring, :func:`check_answers` sends image 0 once over each transport (with the
official decoders: JSON, ``tritonclient.http``'s ``InferResult``, the generated protobuf) and
requires the same top-1 class from all four.
"""

from __future__ import annotations

import asyncio
import json
import resource
import struct
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bench import load

#: The transports, in the order the report lists them; ratios are to :data:`BASELINE`.
TRANSPORTS = ("rest_multipart", "rest_jpeg", "rest_v2_binary", "grpc")
BASELINE = "rest_multipart"
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"
MULTIPART_BOUNDARY = "bench-transport-boundary-7d1f0c"

#: What each transport sends and with what client (recorded in the results and the report).
DESCRIPTIONS = {
    "rest_multipart": "POST /predict, multipart/form-data `file` part (raw HTTP/1.1 client, bench/load.py)",
    "rest_jpeg": "POST /predict, the JPEG as the body, image/jpeg (raw HTTP/1.1 client, bench/load.py)",
    "rest_v2_binary": (
        "POST /v2/models/{name}/infer, binary tensor extension: `image` BYTES, binary output, "
        "body from tritonclient.http's generate_request_body (raw HTTP/1.1 client, bench/load.py)"
    ),
    "grpc": (
        "ModelInfer, `image` BYTES in raw_input_contents (a grpcio grpc.aio channel per client, "
        "pre-serialised inference_engine.rpc.proto ModelInferRequest, identity serialisers)"
    ),
}


# -- requests, built once ----------------------------------------------------------------------


def multipart_body(image: bytes, boundary: str = MULTIPART_BOUNDARY) -> bytes:
    """A ``multipart/form-data`` body with ``image`` as the ``file`` part."""
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="image.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode("ascii")
    return head + image + f"\r\n--{boundary}--\r\n".encode("ascii")


def v2_binary_body(image: bytes) -> tuple[bytes, int]:
    """``tritonclient.http``'s body for one ``image`` BYTES input with ``binary_data=True`` (and,
    no outputs named, ``binary_data_output``), and the length of its JSON header."""
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_), binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    return bytes(body), int(json_size if json_size is not None else len(body))


def grpc_request(model: str, image: bytes) -> bytes:
    """A serialised ``ModelInferRequest``: ``image`` BYTES ``[1]`` in ``raw_input_contents`` (each
    element length-prefixed, little-endian, as ``tritonclient.grpc`` packs BYTES)."""
    from inference_engine.rpc.proto import grpc_predict_v2_pb2 as pb

    message = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])],
        raw_input_contents=[struct.pack("<I", len(image)) + image],
    )
    return bytes(message.SerializeToString())


def http_requests(transport: str, model: str, path: str, images: Sequence[bytes], port: int) -> list[bytes]:
    """The complete HTTP/1.1 requests of a REST transport, one per image."""
    if transport == "rest_multipart":
        content_type = f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"
        return [load.build_request(path, multipart_body(image), port, content_type) for image in images]
    if transport == "rest_jpeg":
        return [load.build_request(path, image, port, "image/jpeg") for image in images]
    if transport == "rest_v2_binary":
        out = []
        for image in images:
            body, json_size = v2_binary_body(image)
            headers = {"Inference-Header-Content-Length": str(json_size)}
            route = f"/v2/models/{model}/infer"
            out.append(load.build_request(route, body, port, "application/octet-stream", headers))
        return out
    raise KeyError(f"not a REST transport: {transport!r}")


@dataclass(frozen=True)
class Target:
    """Where one transport's requests go: the server's ports and the pre-built requests."""

    transport: str
    http_port: int
    grpc_port: int
    requests: tuple[bytes, ...]

    @property
    def request_bytes(self) -> float:
        return sum(map(len, self.requests)) / len(self.requests)


def targets(
    model: str, path: str, images: Sequence[bytes], http_port: int, grpc_port: int
) -> dict[str, Target]:
    out = {}
    for transport in TRANSPORTS:
        if transport == "grpc":
            requests = tuple(grpc_request(model, image) for image in images)
        else:
            requests = tuple(http_requests(transport, model, path, images, http_port))
        out[transport] = Target(transport, http_port, grpc_port, requests)
    return out


# -- clients -------------------------------------------------------------------------------------


class Client(Protocol):
    async def call(self, request: bytes) -> str:
        """Send one request; its status (``"200"``, ``"503"``; ``"OK"``, ``"UNAVAILABLE"``)."""

    async def close(self) -> None: ...


OK_STATUSES = ("200", "OK")


class HttpClient:
    """One keep-alive HTTP/1.1 connection (:mod:`bench.load`), reconnecting if the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection: load._Connection | None = None

    async def call(self, request: bytes) -> str:
        if self.connection is None or self.connection.closed:
            self.connection = await load.connect(self.port)
        try:
            status, _ = await self.connection.request(request)
        except ConnectionError:
            self.connection = None
            return "connection lost"
        return str(status)

    async def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


class GrpcClient:
    """One ``grpc.aio`` channel (its own HTTP/2 connection) calling ``ModelInfer`` with bytes."""

    def __init__(self, port: int) -> None:
        import grpc

        self.grpc = grpc
        self.channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}",
            options=[
                ("grpc.use_local_subchannel_pool", 1),  # a connection per channel, not one shared
                ("grpc.max_receive_message_length", -1),
            ],
        )
        # No serialisers: requests go out as the pre-built bytes, answers come back as bytes.
        self.infer = self.channel.unary_unary(GRPC_METHOD)

    async def ready(self) -> GrpcClient:
        await asyncio.wait_for(self.channel.channel_ready(), timeout=10)
        return self

    async def call(self, request: bytes) -> str:
        try:
            await self.infer(request)
        except self.grpc.aio.AioRpcError as error:
            return str(error.code().name)
        return "OK"

    async def close(self) -> None:
        await self.channel.close()


async def open_client(target: Target) -> Client:
    if target.transport == "grpc":
        return await GrpcClient(target.grpc_port).ready()
    client = HttpClient(target.http_port)
    client.connection = await load.connect(target.http_port)
    return client


# -- the closed loop -------------------------------------------------------------------------------


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def closed_loop(
    target: Target,
    clients: int,
    warmup: float,
    duration: float,
    on_start: load.Hook = load._noop,
    on_end: load.Hook = load._noop,
    opener: Callable[[Target], Awaitable[Client]] = open_client,
) -> load.Window:
    """``clients`` clients of ``target``'s transport in a closed loop; as :func:`bench.load.closed_loop`
    (answers completing in the window after ``warmup`` counted, hooks at its edges), but the load
    generator's CPU is the whole process's."""
    window = load.Window("closed", clients, duration)
    opened = [await opener(target) for _ in range(clients)]
    requests = target.requests
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + duration

    async def client(index: int, connection: Client) -> None:
        sent = index
        while True:
            request = requests[sent % len(requests)]
            sent += 1
            t0 = time.perf_counter()
            status = await connection.call(request)
            t1 = time.perf_counter()
            if window_start <= t1 <= window_end:
                window.record(status, status in OK_STATUSES, t1 - t0)

    tasks = [asyncio.ensure_future(client(i, c)) for i, c in enumerate(opened)]
    await asyncio.sleep(window_start - time.perf_counter())
    await on_start()
    cpu0 = _process_cpu()
    await asyncio.sleep(window_end - time.perf_counter())
    window.loadgen_cpu_s = _process_cpu() - cpu0
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for connection in opened:
        await connection.close()
    await on_end()
    return window


# -- the answers agree -----------------------------------------------------------------------------


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read(), dict(response.headers)


def top1(
    transport: str, model: str, path: str, image: bytes, http_port: int, grpc_port: int
) -> tuple[int, float]:
    """``(class index, probability)`` of ``image``'s best class, asked over ``transport`` and read with
    that transport's own decoder."""
    url = f"http://127.0.0.1:{http_port}"
    if transport == "rest_multipart":
        body, _ = _post(
            url + path,
            multipart_body(image),
            {"Content-Type": f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"},
        )
        best = json.loads(body)["predictions"][0]
        return int(best["index"]), float(best["score"])
    if transport == "rest_jpeg":
        body, _ = _post(url + path, image, {"Content-Type": "image/jpeg"})
        best = json.loads(body)["predictions"][0]
        return int(best["index"]), float(best["score"])
    if transport == "rest_v2_binary":
        import tritonclient.http as httpclient

        request, json_size = v2_binary_body(image)
        body, headers = _post(
            f"{url}/v2/models/{model}/infer",
            request,
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)},
        )
        length = {k.lower(): v for k, v in headers.items()}.get("inference-header-content-length")
        result = httpclient.InferResult.from_response_body(body, False, int(length) if length else None)
        scores = result.as_numpy("probabilities")
    elif transport == "grpc":
        import grpc

        from inference_engine.rpc.proto import grpc_predict_v2_pb2 as pb

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            answer = channel.unary_unary(GRPC_METHOD)(grpc_request(model, image), timeout=60)
        response = pb.ModelInferResponse.FromString(answer)
        index = [o.name for o in response.outputs].index("probabilities")
        scores = np.frombuffer(response.raw_output_contents[index], dtype="<f4")
    else:
        raise KeyError(transport)
    flat = np.asarray(scores, dtype=np.float32).reshape(-1)
    return int(flat.argmax()), float(flat.max())


def check_answers(
    model: str, path: str, image: bytes, http_port: int, grpc_port: int
) -> dict[str, tuple[int, float]]:
    """Every transport's top-1 for ``image``; raises unless all four name the same class with the
    same probability (to 1e-4)."""
    answers = {t: top1(t, model, path, image, http_port, grpc_port) for t in TRANSPORTS}
    indices = {index for index, _ in answers.values()}
    scores = [score for _, score in answers.values()]
    if len(indices) != 1 or max(scores) - min(scores) > 1e-4:
        raise RuntimeError(f"the transports disagree on the same image: {answers}")
    return answers
