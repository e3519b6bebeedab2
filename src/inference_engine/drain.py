"""A uvicorn server whose drain answers every request that reached it.

uvicorn's own shutdown closes the listening socket and then every connection without a request
in progress, which resets connections whose clients are already sending (accepted by the kernel
but not yet by a busy loop, or with a request not yet read). :class:`DrainingServer` keeps
listening for ``server.shutdown_delay_s`` (new requests get 503 while the load balancer takes the
pod out), closes the listener without dropping its queue, and answers what is open before the
lifespan shutdown drains the models. It relies on uvicorn internals (``servers``,
``server_state``, the protocols' ``cycle`` and ``transport``), checked against the pinned version.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import sys
import termios
import time
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_engine.service import InferenceService

logger = logging.getLogger("inference_engine.server")

#: Exit status after a second signal cut the drain short (128 + SIGTERM, as a shell reports it).
EXIT_FORCED = 128 + signal.SIGTERM

#: During the drain, how long a connection with no request in progress stays open before it is
#: closed: a client that connected just before the listener closed, or that is about to send its
#: next request on a keep-alive connection, gets its answer (a 503) rather than a closed socket.
#: A client slower than this to send a request loses the race every keep-alive close has.
IDLE_CLOSE_GRACE_S = 1.0

#: How often the drain looks at its connections.
DRAIN_POLL_S = 0.05


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a drain that answers every request that reached it.

    uvicorn's own ``shutdown`` closes the listening socket at once and then every connection with
    no request in progress. Both reset connections whose clients are already sending: the
    kernel completes a handshake before the loop accepts the connection, and closing a listening
    socket resets the connections still queued on it; closing a socket whose request the loop has
    not read yet sends a reset too, as does closing a keep-alive connection that the client is
    reusing at that moment. On a busy machine the loop is slow to accept and to read, so under
    load a SIGTERM dropped a good share of the open requests, and the process, having no request
    left in progress, exited a moment later. This drain keeps those connections and answers them.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        service: InferenceService,
        *,
        drain_timeout_s: float,
        shutdown_delay_s: float,
    ) -> None:
        super().__init__(config)
        self._service = service
        self._drain_timeout_s = drain_timeout_s
        self._shutdown_delay_s = shutdown_delay_s
        self._signalled_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self.should_exit:  # a second signal: the operator wants out now
            logger.warning("second %s: exiting now without draining", name)
            logging.shutdown()
            os._exit(EXIT_FORCED)
        self._signalled_at = time.monotonic()  # the drain's budget counts from here
        logger.info("stopping on %s: refusing new work, draining", name)
        self._service.begin_shutdown()
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain in order: keep listening for the delay, close the listener, answer what is open.

        One budget, ``drain_timeout_s`` from the signal, as the service's own drain (in the
        lifespan shutdown, which runs last) counts it; the delay is its first part. Connections
        taken from the accept queue as the listener closes get at least ``IDLE_CLOSE_GRACE_S`` to
        be answered even when the delay used the whole budget.
        """
        started = self._signalled_at if self._signalled_at is not None else time.monotonic()
        self._service.begin_shutdown()  # done at the signal; here for any other way out of the loop
        delay_left = started + self._shutdown_delay_s - time.monotonic()
        if delay_left > 0:
            logger.info(
                "still accepting connections for %.1f s (server.shutdown_delay_s); new requests get 503",
                delay_left,
            )
            await asyncio.sleep(delay_left)
        accepted = await self._close_listeners(sockets)
        logger.info("listener closed", extra={"accepted_from_queue": accepted})
        deadline = max(started + self._drain_timeout_s, time.monotonic() + IDLE_CLOSE_GRACE_S)
        if not await self._drain_connections(deadline):
            tasks = list(self.server_state.tasks)
            logger.error("drain timeout: cancelling %d request(s) still in progress", len(tasks))
            for task in tasks:
                task.cancel(msg="server.drain_timeout_s exceeded")
            if tasks:  # let each write its 500 (uvicorn answers a cancelled request) before exit
                await asyncio.wait(tasks, timeout=IDLE_CLOSE_GRACE_S)
        if not self.force_exit:
            await self.lifespan.shutdown()

    async def _close_listeners(self, sockets: list[socket.socket] | None) -> int:
        """Close the listening sockets without resetting the connections queued on them.

        A duplicate of each listening descriptor keeps its socket listening while uvicorn's
        servers close theirs (and the loop stops accepting on them); the connections the kernel
        has queued are then accepted here, to the last one, and handed to the loop as ordinary
        HTTP connections; only then is the duplicate closed. A client that connects after that
        is refused: its connect fails, so it knows nothing was sent and can retry elsewhere.
        Returns how many connections were taken from the queues.
        """
        loop = asyncio.get_running_loop()
        held = [
            socket.socket(fileno=os.dup(listener.fileno()))
            for server in self.servers
            for listener in server.sockets
        ]
        for server in self.servers:
            server.close()
        accepted = 0
        for listener in held:
            with listener:
                listener.setblocking(False)
                while True:
                    try:
                        connection, _ = listener.accept()
                    except (BlockingIOError, InterruptedError):
                        break  # the queue is empty: close it now, before another one completes
                    except OSError as exc:  # out of descriptors: what is left is reset
                        logger.warning("could not accept a queued connection: %s", exc)
                        break
                    connection.setblocking(False)
                    await loop.connect_accepted_socket(self._connection, connection, ssl=self.config.ssl)
                    accepted += 1
        for listener in sockets or []:  # sockets handed in by a process manager
            listener.close()
        return accepted

    def _connection(self) -> asyncio.Protocol:
        """An HTTP connection as uvicorn's own servers make them (see ``uvicorn.Server.startup``).

        ``http_protocol_class`` is the class ``serve`` passed as ``uvicorn.Config(http=...)``
        (``protocol.BoundedHttpProtocol``), so a connection taken from the accept queue during
        the drain has the same timeouts as any other.
        """
        return self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            _loop=asyncio.get_running_loop(),
        )

    async def _drain_connections(self, deadline: float) -> bool:
        """Wait until every connection has been answered and closed; False at the deadline.

        A connection with a request in progress closes after its response (its client was told
        ``Connection: close``). One without is closed once it has stayed so, with nothing
        unread in its socket, for ``IDLE_CLOSE_GRACE_S``: its client may be sending a request
        at this moment (the first on a connection just accepted from the queue, the next on a
        keep-alive one), and that request is answered 503, not reset.
        """
        state = self.server_state
        idle_since: dict[object, float] = {}
        while state.connections or state.tasks:
            now = time.monotonic()
            if now >= deadline or self.force_exit:
                return False
            for connection in list(state.connections):
                if _request_in_progress(connection):
                    idle_since.pop(connection, None)
                    connection.shutdown()  # no keep-alive after this response
                elif _unread_bytes(connection):
                    idle_since.pop(connection, None)  # a request the loop is about to read
                elif now - idle_since.setdefault(connection, now) >= IDLE_CLOSE_GRACE_S:
                    connection.shutdown()  # idle: closes it
            await asyncio.sleep(DRAIN_POLL_S)
        return True


def _request_in_progress(connection: object) -> bool:
    """Whether a uvicorn HTTP connection has a request whose response is not complete."""
    cycle = getattr(connection, "cycle", None)
    return cycle is not None and not cycle.response_complete


def _unread_bytes(connection: object) -> int:
    """Bytes the client sent that the loop has not read yet (closing now would reset them)."""
    transport = getattr(connection, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return 0
    try:
        fd = sock.fileno()
        if fd < 0:
            return 0
        count = fcntl.ioctl(fd, termios.FIONREAD, bytes(4))
    except (OSError, ValueError):  # closed meanwhile
        return 0
    return int.from_bytes(count, sys.byteorder, signed=True)


class CloseWhileDraining:
    """ASGI wrapper: once the service drains, every response tells its client to close the connection.

    A client that reuses a keep-alive connection the server is about to close can lose its
    request to the close; ``Connection: close`` on every answer of the drain, 200 or 503, sends
    its next request to a new connection instead (another replica, once this one has been taken
    out of the load balancer). uvicorn closes the connection after such a response.
    """

    def __init__(self, app: ASGIApp, service: InferenceService) -> None:
        self.app = app
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self._service.draining:
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)
