"""``inference.GRPCInferenceService``: each RPC translated to the one service interface REST uses.

Nothing here decides anything: routing, versions, admission, batching and errors are the
service's (as they are for ``api/v2.py``); the tensors are translated by ``rpc/codec.py`` into
the same V2 request REST decodes to. ``ModelStreamInfer`` runs the requests of one stream
concurrently (at most :data:`STREAM_WINDOW` at once: past it the server stops reading the stream
and HTTP/2 flow control pushes back on the client) and answers each as it completes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format

from inference_engine import __version__
from inference_engine.control import check_control_request
from inference_engine.rpc.call import DRAIN, Calls, RpcCall
from inference_engine.rpc.codec import infer_request, infer_response, metadata_response
from inference_engine.rpc.proto import grpc_predict_v2_pb2 as pb
from inference_engine.rpc.proto.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceServicer
from inference_engine.service import InferenceService
from inference_engine.settings import Settings
from inference_engine.transport import off_loop
from inference_engine.v2codec import (
    EXTENSIONS,
    output_tensors,
    request_timeout_s,
    requested_outputs,
    service_arguments,
)

#: Binary tensors are REST's extension; gRPC carries raw bytes natively.
GRPC_EXTENSIONS = [e for e in EXTENSIONS if e != "binary_tensor_data"]

#: Requests of one stream in progress at once.
STREAM_WINDOW = 64
#: Put on a stream's answer queue when the client has closed its side and all is answered.
END = object()

Context = grpc.aio.ServicerContext[Any, Any]


class InferenceServicer(GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService, settings: Settings, calls: Calls) -> None:
        self.service = service
        self.settings = settings
        self.calls = calls

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        async def live(call: RpcCall) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=self.service.liveness() is None)

        return await self.calls.unary(context, "ServerLive", live, operational=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        async def ready(call: RpcCall) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.service.readiness().ready)

        return await self.calls.unary(context, "ServerReady", ready, operational=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        async def ready(call: RpcCall) -> pb.ModelReadyResponse:
            return pb.ModelReadyResponse(
                ready=self.service.model_ready(request.name, request.version or None)
            )

        return await self.calls.unary(context, "ModelReady", ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        async def metadata(call: RpcCall) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(
                name="inference-engine", version=__version__, extensions=GRPC_EXTENSIONS
            )

        return await self.calls.unary(context, "ServerMetadata", metadata)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        async def metadata(call: RpcCall) -> pb.ModelMetadataResponse:
            return metadata_response(self.service.model_metadata(request.name, request.version or None))

        return await self.calls.unary(context, "ModelMetadata", metadata)

    async def _infer(self, request: pb.ModelInferRequest, call: RpcCall) -> pb.ModelInferResponse:
        route = call.routed(
            self.service.route(request.model_name, request.model_version or None, call.routing_key)
        )
        self.service.admit(route)
        decoded = await off_loop(request.ByteSize(), infer_request, request)
        timeout_s = request_timeout_s(decoded.parameters)  # as over REST; the earlier deadline wins
        if timeout_s is not None:
            call.limit_timeout(min(timeout_s, self.settings.server.max_request_timeout_s))
        rows = await self.service.run_rows(
            route,
            deadline=call.deadline,
            request_id=call.request_id,
            caller=call.caller,
            outputs=requested_outputs(decoded),
            **service_arguments(decoded),
        )
        call.answered(rows)
        outputs = output_tensors(decoded, rows)
        size = sum(array.nbytes for array in rows.tensors.values())
        return await off_loop(size, infer_response, rows.model, rows.model_version, decoded.id, outputs)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        async def infer(call: RpcCall) -> pb.ModelInferResponse:
            return await self._infer(request, call)

        return await self.calls.unary(context, "ModelInfer", infer)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        answers: asyncio.Queue[Any] = asyncio.Queue()  # answers, then END (or DRAIN at a stop)
        window = asyncio.Semaphore(STREAM_WINDOW)
        metadata = tuple(context.invocation_metadata() or ())
        peer = context.peer()
        running: set[asyncio.Task[None]] = set()
        in_flight = 0

        async def answer(request: pb.ModelInferRequest) -> None:
            nonlocal in_flight
            try:
                response = await self._streamed(request, metadata, context.time_remaining(), peer)
                in_flight -= 1
                answers.put_nowait(response)
            finally:
                window.release()

        async def read() -> None:
            nonlocal in_flight
            try:
                async for request in request_iterator:
                    await window.acquire()
                    in_flight += 1
                    task = asyncio.create_task(answer(request))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.wait(list(running))
            finally:
                answers.put_nowait(END)

        reader = asyncio.create_task(read())
        self.calls.streams.add(answers)
        draining = self.calls.stopping
        try:
            while True:
                item = await answers.get()
                if item is END:
                    await reader  # raises what ended the reading, if it failed
                    return
                if item is DRAIN:
                    draining = True
                else:
                    yield item
                if draining and in_flight == 0 and answers.empty():
                    return  # the server stops and nothing of this stream is left to answer
        finally:
            self.calls.streams.discard(answers)
            for task in [reader, *running]:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(reader, *running, return_exceptions=True)

    async def _streamed(
        self,
        request: pb.ModelInferRequest,
        metadata: tuple[tuple[str, str | bytes], ...],
        time_remaining: float | None,
        peer: str,
    ) -> pb.ModelStreamInferResponse:
        """One request of a stream, as a call of its own; its error goes in ``error_message``."""
        calls = self.calls
        call = calls.open(metadata, time_remaining, request_id=request.id)
        with calls.bound(call):

            async def infer(call: RpcCall) -> pb.ModelInferResponse:
                return await self._infer(request, call)

            result, outcome = await calls.run(call, peer, infer)
            calls.finish(call, "ModelStreamInfer", outcome, operational=False)
        if outcome.error is not None:
            return pb.ModelStreamInferResponse(
                error_message=outcome.error.message,
                infer_response=pb.ModelInferResponse(model_name=request.model_name, id=request.id),
            )
        return pb.ModelStreamInferResponse(infer_response=result)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        async def statistics(call: RpcCall) -> pb.ModelStatisticsResponse:
            totals = self.service.statistics(request.name or None, request.version or None)
            return json_format.ParseDict({"model_stats": totals}, pb.ModelStatisticsResponse())

        return await self.calls.unary(context, "ModelStatistics", statistics)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        async def index(call: RpcCall) -> pb.RepositoryIndexResponse:
            return pb.RepositoryIndexResponse(
                models=[
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=e.name, version=e.version or "", state=e.state, reason=e.reason
                    )
                    for e in self.service.control.index(request.ready)
                ]
            )

        return await self.calls.unary(context, "RepositoryIndex", index, admin=True)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        async def load(call: RpcCall) -> pb.RepositoryModelLoadResponse:
            check_control_request(self.settings.server, request.parameters)
            await self.service.control.load(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await self.calls.unary(context, "RepositoryModelLoad", load, admin=True)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        async def unload(call: RpcCall) -> pb.RepositoryModelUnloadResponse:
            check_control_request(self.settings.server)
            await self.service.control.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self.calls.unary(context, "RepositoryModelUnload", unload, admin=True)
