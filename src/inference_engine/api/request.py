"""The preamble every inference route shares, over the typed request context.

A route makes one :class:`InferenceCall`: it finds the context the middleware bound, sets the
deadline (arrival + ``X-Request-Timeout-Ms`` capped by configuration), reads the body under that
deadline (504 when it does not arrive in time), runs the service call raced against the
client's disconnect, and records the batch size for the access line. CPU-heavy translation
(parsing a large body, encoding a large answer) goes through :func:`off_loop`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from inference_engine.answers import Route
from inference_engine.api.payload import capped_stream
from inference_engine.errors import BadRequest, ClientDisconnected, DeadlineExceeded
from inference_engine.logging import RequestContext, current_request
from inference_engine.settings import ServerSettings
from inference_engine.tenancy import Caller
from inference_engine.transport import MAX_ROUTING_KEY, Batched, off_loop

T = TypeVar("T")

TIMEOUT_HEADER = "x-request-timeout-ms"
ROUTING_KEY_HEADER = "x-routing-key"

B = TypeVar("B", bound=Batched)


def request_timeout_s(request: Request, server: ServerSettings) -> float:
    """The client's own deadline from ``X-Request-Timeout-Ms``, capped by configuration."""
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return server.request_timeout_s
    if not (raw.strip().isascii() and raw.strip().isdecimal()) or int(raw) <= 0:
        raise BadRequest("X-Request-Timeout-Ms must be a positive whole number of milliseconds")
    return min(int(raw) / 1000.0, server.max_request_timeout_s)


def loop_time(monotonic_deadline: float) -> float:
    """Convert a ``time.monotonic()`` deadline to the event loop's clock."""
    return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())


async def json_response(size: int, build: Callable[..., object], *args: object) -> Response:
    """``build(*args)`` encoded as a JSON response, numpy arrays included, off the loop when large.

    Encoded here with orjson (arrays written straight from their buffers) rather than by the
    framework (``jsonable_encoder`` walks every float of every embedding in Python, on the loop).
    """
    return await off_loop(size, _encoded, build, args)


def _encoded(build: Callable[..., object], args: tuple[object, ...]) -> Response:
    body = orjson.dumps(build(*args), option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type="application/json")


class InferenceCall:
    """One inference request from its arrival to its answer, as every route handles it."""

    def __init__(self, request: Request, server: ServerSettings) -> None:
        ctx = current_request.get()
        if ctx is None:  # served without the request-context middleware (in-process tests)
            ctx = RequestContext(request_id="-")
            current_request.set(ctx)
        self.ctx = ctx
        self.request = request
        self.server = server

    @functools.cached_property
    def deadline(self) -> float:
        """When the answer is due (``time.monotonic()``); read after the model lookup, so an
        unknown model is a 404 whatever its timeout header says."""
        return self.ctx.started + request_timeout_s(self.request, self.server)

    def limit_timeout(self, seconds: float) -> None:
        """A timeout the request carries in its body (V2's ``timeout`` parameter), capped as the
        header is; the earlier deadline of the two wins."""
        own = self.ctx.started + min(seconds, self.server.max_request_timeout_s)
        self.deadline = min(self.deadline, own)

    @property
    def request_id(self) -> str:
        return self.ctx.request_id

    @property
    def caller(self) -> Caller:
        """Its tenant and priority, as access control found them (the fair queue's key)."""
        return self.ctx.caller

    def routed(self, route: Route) -> Route:
        """Record the (known) model and version this request goes to; they become metric labels
        and the ``X-Model-Version`` header."""
        self.ctx.model, self.ctx.version = route.model, route.version
        return route

    @property
    def routing_key(self) -> str | None:
        """``X-Routing-Key``: requests with the same key go to the same version (sticky A/B)."""
        key = self.request.headers.get(ROUTING_KEY_HEADER)
        if key is not None and len(key) > MAX_ROUTING_KEY:
            raise BadRequest(f"X-Routing-Key must be at most {MAX_ROUTING_KEY} characters")
        return key or None

    def elapsed(self) -> float:
        return time.monotonic() - self.ctx.started

    async def read(self, reading: Coroutine[Any, Any, T], late: str) -> T:
        """Await the body under the request's deadline; ``late`` is the 504's message."""
        try:
            due = loop_time(self.deadline)
        except BaseException:  # a bad timeout header: the body is never read
            reading.close()
            raise
        try:
            async with asyncio.timeout_at(due):
                return await reading
        except TimeoutError:
            raise DeadlineExceeded(late) from None

    async def body(self, late: str = "the request did not arrive within its deadline") -> bytes:
        """The whole body, capped while it streams (413), under the deadline (504)."""
        return await self.read(_join(capped_stream(self.request, self.server.max_body_bytes)), late)

    async def answer(self, work: Awaitable[B]) -> B:
        """The service's result, cancelled if the client disconnects first; its batch size noted."""
        result = await until_disconnect(work, self.request.receive)
        self.ctx.batch_size = result.batch_size
        self.ctx.version = result.model_version  # re-routed if its version retired meanwhile
        self.ctx.cached = result.cached
        return result


async def _join(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(work: Awaitable[T], receive: Receive) -> T:
    """Await ``work``, cancelling it if the client disconnects first (so it costs no forward pass)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the server gave up on this request (shutdown timeout)
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientDisconnected("the client disconnected before the answer was ready")
    return task.result()
