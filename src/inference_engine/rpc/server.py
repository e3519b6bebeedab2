"""The gRPC listener: ``grpc.aio`` on the HTTP server's own event loop.

Both transports therefore share one :class:`~inference_engine.service.InferenceService`, one set
of batchers (a gRPC request and a REST request can share a forward pass) and one drain. Beside
the inference service it serves the standard ``grpc.health.v1.Health`` service (kept in step
with readiness: ``""``, the inference service and each model by name) and server reflection
(``grpcurl`` and ``grpc_cli`` list and call the methods without the ``.proto``).

At shutdown the HTTP drain runs first (new calls meanwhile get UNAVAILABLE ``shutting_down``
from the service, and health turns NOT_SERVING), then :meth:`GrpcTransport.stop` stops taking
calls and lets those in progress, streams included, finish within the drain budget, and only
then does the service drain its models.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from inference_engine.access import AccessPolicy
from inference_engine.errors import ConfigError
from inference_engine.metrics import Metrics
from inference_engine.rpc.call import SERVICE, Calls
from inference_engine.rpc.proto import grpc_predict_v2_pb2 as pb
from inference_engine.rpc.proto.grpc_predict_v2_pb2_grpc import add_GRPCInferenceServiceServicer_to_server
from inference_engine.rpc.servicer import InferenceServicer
from inference_engine.service import InferenceService
from inference_engine.settings import Settings

logger = logging.getLogger("inference_engine.rpc")

#: How often the health service is brought in line with readiness.
HEALTH_POLL_S = 0.5

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """The descriptors reflection describes: the generated messages live in a pool of their own
    (``make proto`` puts them there, clear of tritonclient's same-named ones in the default
    pool), to which the health and reflection services' files are added."""
    pool = pb.DESCRIPTOR.pool
    for file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        with contextlib.suppress(TypeError):  # already added (a second server in this process)
            pool.AddSerializedFile(file.serialized_pb)
    return pool


def bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcTransport:
    """Started by the app's lifespan once the service runs; stopped before the service drains."""

    def __init__(
        self,
        settings: Settings,
        service: InferenceService,
        metrics: Metrics,
        access: AccessPolicy,
        *,
        share_port: bool = False,
    ) -> None:
        """``share_port``: one of ``server.workers`` processes, binding the port beside the others."""
        self.settings = settings
        self._share_port = share_port
        self.service = service
        self.calls = Calls(settings.server, metrics, access, settings.logging.access_log)
        self.port: int | None = None  # the bound port, once started
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        grpc_settings = self.settings.grpc
        max_message = grpc_settings.max_message_bytes or self.settings.server.max_body_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", -1),  # answers are the server's own, and bounded
                # Without this a second server binds the same port and the kernel splits the calls;
                # which is what several workers want (the supervisor holds the port for them).
                ("grpc.so_reuseport", 1 if self._share_port else 0),
            ],
            # Past this many calls in progress new ones get RESOURCE_EXHAUSTED at once, as HTTP's
            # connections past server.max_connections get 503.
            maximum_concurrent_rpcs=self.settings.server.max_connections,
        )
        add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.service, self.settings, self.calls), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server, pool=reflection_pool()
        )
        address = bind_address(self.settings.server.host, grpc_settings.port)
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(
                f"grpc.port: cannot listen on {address} ({exc}); free the port, choose another "
                "(--grpc-port, IE_GRPC__PORT) or turn gRPC off (--no-grpc, IE_GRPC__ENABLED=false)"
            ) from None
        await server.start()
        self._server = server
        await self._update_health()
        self._health_task = asyncio.create_task(self._follow_readiness(), name="grpc-health")
        logger.info("gRPC listening", extra={"address": bind_address(self.settings.server.host, self.port)})

    async def stop(self, grace_s: float) -> None:
        """Stop taking calls; those in progress get ``grace_s`` to finish, then are cancelled."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self._health.enter_graceful_shutdown()
        self.calls.begin_stop()
        if self._server is not None:
            await self._server.stop(grace_s)
            logger.info("gRPC stopped")

    async def _follow_readiness(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_POLL_S)
            await self._update_health()

    async def _update_health(self) -> None:
        readiness = self.service.readiness()
        overall = _SERVING if readiness.ready else _NOT_SERVING
        await self._health.set("", overall)
        await self._health.set(SERVICE, overall)
        for name, reason in readiness.models.items():
            ready = reason is None and not readiness.draining
            await self._health.set(name, _SERVING if ready else _NOT_SERVING)
