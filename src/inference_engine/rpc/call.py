"""One gRPC call from its arrival to its answer, as every RPC of the service handles it.

The gRPC counterpart of the HTTP middleware and ``api/request.py`` together: the request id
(``x-request-id`` metadata, else a new one, bound to the logging context and sent back), access
control (the same :class:`~inference_engine.access.AccessPolicy` as HTTP: ``authorization:
Bearer`` or ``x-api-key`` metadata, one rate limit per key across both transports), the deadline
(the gRPC deadline capped by ``server.max_request_timeout_s``, else ``server.request_timeout_s``),
the error mapping (``rpc/status.py``), the request metrics with ``protocol="grpc"`` and the access
log line. A streamed request is one call of its own: same rules, its error in the stream's
``error_message`` instead of the call's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc import StatusCode

from inference_engine.access import AccessPolicy, bearer_or_api_key
from inference_engine.accesslog import record_request
from inference_engine.answers import Route
from inference_engine.errors import BadRequest, EngineError
from inference_engine.logging import RequestContext, current_request
from inference_engine.metrics import Metrics
from inference_engine.requestid import RequestIds
from inference_engine.rpc.status import Metadata, error_metadata, http_status, status_code
from inference_engine.settings import ServerSettings
from inference_engine.tenancy import Caller
from inference_engine.transport import MAX_ROUTING_KEY, Batched

T = TypeVar("T")

logger = logging.getLogger("inference_engine.rpc")

SERVICE = "inference.GRPCInferenceService"
#: Put on a stream's answer queue when the server stops.
DRAIN = object()
#: A cancellation this close to the deadline is the deadline's (the client's clock fires first).
_CLOCK_SLACK_S = 0.005
#: A cancelled call's code and the HTTP status it is counted with, by why it was cancelled.
_CANCELLED = {
    "deadline_exceeded": (StatusCode.DEADLINE_EXCEEDED, 504),
    "client_disconnected": (StatusCode.CANCELLED, 499),
    "drain_timeout": (StatusCode.UNAVAILABLE, 500),  # HTTP answers a request cut off so with 500
}


def peer_address(peer: str) -> str:
    """The client's address from gRPC's peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    return rest.rpartition(":")[0] or peer


@dataclass
class RpcCall:
    """What one call knows: its request context (the access line's and metrics' facts), its
    deadline (``time.monotonic()``) and its metadata."""

    ctx: RequestContext
    deadline: float
    metadata: dict[str, str]
    #: The rate limit's figures (``x-ratelimit-*``), sent back with the answer.
    limits: Metadata = ()

    @property
    def request_id(self) -> str:
        return self.ctx.request_id

    @property
    def routing_key(self) -> str | None:
        """``x-routing-key``: calls with the same key go to the same version (sticky A/B)."""
        key = self.metadata.get("x-routing-key")
        if key is not None and len(key) > MAX_ROUTING_KEY:
            raise BadRequest(f"x-routing-key must be at most {MAX_ROUTING_KEY} characters")
        return key or None

    def limit_timeout(self, seconds: float) -> None:
        """A timeout the request carries (V2's ``timeout`` parameter): the earlier deadline wins."""
        self.deadline = min(self.deadline, self.ctx.started + seconds)

    def routed(self, route: Route) -> Route:
        self.ctx.model, self.ctx.version = route.model, route.version
        return route

    def answered(self, result: Batched) -> None:
        self.ctx.batch_size = result.batch_size
        self.ctx.version = result.model_version
        self.ctx.cached = result.cached

    @property
    def caller(self) -> Caller:
        """Its tenant and priority, as access control found them."""
        return self.ctx.caller


@dataclass
class Outcome:
    """How a call ended: its code, and the error that ended it (``None`` when OK)."""

    code: StatusCode = StatusCode.OK
    error: EngineError | None = None


class Calls:
    """Runs the work of each call under the rules above; one per gRPC server."""

    def __init__(
        self, server: ServerSettings, metrics: Metrics, access: AccessPolicy, access_log: bool
    ) -> None:
        self.server = server
        self.metrics = metrics
        self.access = access
        self.access_log = access_log
        self.request_ids = RequestIds()
        #: The server is stopping: calls still running when the drain time is up are cut off.
        self.stopping = False
        #: The answer queues of the open streams, told when the server stops (see ``begin_stop``).
        self.streams: set[asyncio.Queue[Any]] = set()

    def begin_stop(self) -> None:
        """The server stops taking calls: every open stream ends once it has nothing in flight
        (rather than holding the stop for the whole drain budget while it idles)."""
        self.stopping = True
        for answers in self.streams:
            answers.put_nowait(DRAIN)

    def open(
        self, metadata: Iterable[tuple[str, str | bytes]], time_remaining: float | None, request_id: str = ""
    ) -> RpcCall:
        """A call that arrived now; ``request_id``: a streamed request's own ``id``."""
        texts = {k: v for k, v in metadata if isinstance(v, str)}
        candidate = request_id or texts.get("x-request-id", "")
        ctx = RequestContext(request_id=self.request_ids.accept(candidate), protocol="v2")
        allowed = self.server.request_timeout_s if time_remaining is None else time_remaining
        return RpcCall(ctx, ctx.started + min(allowed, self.server.max_request_timeout_s), texts)

    async def unary(
        self,
        context: grpc.aio.ServicerContext[object, T],
        method: str,
        work: Callable[[RpcCall], Awaitable[T]],
        *,
        operational: bool = False,
        admin: bool = False,
    ) -> T:
        """``work``'s answer, or the call aborted with the status its error maps to."""
        call = self.open(context.invocation_metadata() or (), context.time_remaining())
        outcome = Outcome()
        with self.bound(call):
            try:
                result, outcome = await self.run(
                    call, context.peer(), work, operational=operational, admin=admin
                )
                trailing: Metadata = (("x-request-id", call.request_id),)
                if outcome.error is not None:
                    await context.abort(
                        outcome.code,
                        outcome.error.message,
                        trailing_metadata=trailing + error_metadata(outcome.error),
                    )
                if call.ctx.version is not None:
                    trailing += (("x-model-version", call.ctx.version),)
                if call.ctx.cached is not None:
                    trailing += (("x-cache", "hit" if call.ctx.cached else "miss"),)
                context.set_trailing_metadata(trailing + call.limits)
                assert result is not None
                return result
            finally:
                self.finish(call, method, outcome, operational=operational)

    @contextlib.contextmanager
    def bound(self, call: RpcCall) -> Iterator[None]:
        """``call``'s request context bound for logging (request ids on every line)."""
        token = current_request.set(call.ctx)
        try:
            yield
        finally:
            current_request.reset(token)

    async def run(
        self,
        call: RpcCall,
        peer: str,
        work: Callable[[RpcCall], Awaitable[T]],
        *,
        operational: bool = False,
        admin: bool = False,
    ) -> tuple[T | None, Outcome]:
        """Check access, then ``work``; an engine error (or a bug, as INTERNAL) is returned, not
        raised. A cancelled call (the client went away, or its deadline passed) stays cancelled."""
        key = bearer_or_api_key(call.metadata.get("authorization", ""), call.metadata.get("x-api-key", ""))
        try:
            grant = await self.access.check(
                key, peer_address(peer), operational=operational, admin=admin,
                priority=call.metadata.get("x-priority"),
            )  # fmt: skip
            call.ctx.caller = grant.caller
            decision = grant.decision
            if decision is not None:
                call.limits = tuple((k.lower(), v) for k, v in decision.headers().items())
            return await work(call), Outcome()
        except EngineError as exc:
            if exc.status_code >= 500:
                logger.warning("request failed: %s", exc.message, extra={"error": exc.code})
            call.ctx.error = exc.code
            return None, Outcome(status_code(exc), exc)
        except asyncio.CancelledError:
            # gRPC cancels the handler when the client cancels, when its deadline passes, and
            # when the server's stop runs out of drain time (as HTTP's drain, a server error).
            if time.monotonic() >= call.deadline - _CLOCK_SLACK_S:
                call.ctx.error = "deadline_exceeded"
            else:
                call.ctx.error = "drain_timeout" if self.stopping else "client_disconnected"
            raise
        except Exception:
            logger.exception("unhandled error")
            call.ctx.error = "internal_error"
            return None, Outcome(
                StatusCode.INTERNAL, EngineError("internal server error; see the server log")
            )

    def finish(self, call: RpcCall, method: str, outcome: Outcome, *, operational: bool) -> None:
        """Count the call and log its line (a successful probe is counted, not logged)."""
        code, status = outcome.code, http_status(outcome.code)
        if outcome.error is not None:
            status = outcome.error.status_code
        elif call.ctx.error is not None:  # cancelled
            code, status = _CANCELLED[call.ctx.error]
        route = f"/{SERVICE}/{method}"
        record_request(
            self.metrics,
            call.ctx,
            protocol="grpc",
            route=route,
            status=status,
            elapsed=time.monotonic() - call.ctx.started,
            log_line=self.access_log and not (operational and code is StatusCode.OK),
            fields={"method": "grpc", "path": route, "grpc_status": code.name},
        )
