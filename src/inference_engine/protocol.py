"""uvicorn's httptools HTTP/1.1 connection, with every wait on the client bounded in time.

uvicorn bounds an idle keep-alive connection (``timeout_keep_alive``) and the app bounds a
request's body while it reads it (the request deadline: 504), but a client can still hold a
connection, and a place under ``server.max_connections``, for as long as it likes:

- by sending its headers a byte a second (slowloris): nothing times them;
- by connecting and sending nothing: the idle timer is armed only after a response;
- by trickling the rest of a body the app has already answered (504, 413, 401...): uvicorn reads
  and discards it, each byte restarting the idle timer;
- by reading nothing of a large answer: the answer waits in the connection's buffer for ever, and
  with pipelined requests a request task waits with it.

A few hundred such clients fill the connection limit and every other client gets 503.
:class:`BoundedHttpProtocol` bounds each wait in the connection itself, below the app. It relies on
uvicorn internals (the parser callbacks, ``cycle``, ``pipeline``, ``flow``, ``loop``,
``transport``, the keep-alive timer and ``_start_asgi_task``), checked against the pinned
version, as ``drain.py`` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import ClassVar

from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

logger = logging.getLogger("inference_engine.protocol")


class BoundedHttpProtocol(HttpToolsProtocol):
    """An HTTP/1.1 connection on which no wait for the client lasts longer than a set time.

    - **Headers**: a request's headers must be complete within ``header_timeout_s`` of its first
      byte, however the bytes trickle in; the timer runs only while no request is in progress on
      the connection (a new connection's first request, the next one on a keep-alive connection).
      Past it the client gets ``408 Request Timeout`` with ``Connection: close``. A request
      pipelined behind one in progress is not timed: its bytes may sit unread while the first
      one's body is throttled, which is the server's doing.
    - **Silence**: a connection that sends nothing once accepted is closed after
      ``keep_alive_timeout_s`` (uvicorn's ``timeout_keep_alive``), as an idle keep-alive
      connection is.
    - **A discarded body**: the rest of the body of a request already answered must arrive within
      ``keep_alive_timeout_s`` of the answer, else the connection is closed.
    - **A stalled reader**: an answer whose client takes none of it for ``send_timeout_s`` while the
      buffers are full is dropped with the connection, so a request blocked writing it ends.

    The 408 and the two closes for a client that holds on never reach the app, so no metric counts
    them: each logs one INFO line with the client's address (logger ``inference_engine.protocol``).
    A silent connection is closed without a line, as uvicorn's idle closes are. Also, when a
    connection is lost, the request running on it is told so, not only the last one read (uvicorn
    marks only that one: a pipelined client that hung up left the running request writing to a
    closed transport, an ``unhandled error`` traceback on uvloop).

    Configure it with :func:`bounded_http_protocol`: uvicorn builds connections from a class and its
    own ``Config``, so the timeouts travel as class attributes of a subclass.
    """

    #: Seconds from a request's first byte to the end of its headers (``server.header_timeout_s``).
    header_timeout_s: ClassVar[float] = 10.0
    #: Seconds an answer may wait with full buffers for its client to read (``server.send_timeout_s``).
    send_timeout_s: ClassVar[float] = 60.0

    _header_timer: asyncio.TimerHandle | None = None
    _discard_timer: asyncio.TimerHandle | None = None
    _send_timer: asyncio.TimerHandle | None = None
    _running: RequestResponseCycle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms its idle timer only after a response: a connection that never sends a byte
        # would otherwise stay open, and count against the connection limit, for ever.
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._discard_timer, self._send_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._discard_timer = self._send_timer = None
        running = self._running
        if running is not None and running is not self.cycle and not running.response_complete:
            # uvicorn tells only ``self.cycle``, the last request read, which is not the running
            # one when more were pipelined behind it.
            running.disconnected = True
            running.message_event.set()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    # Headers

    def on_message_begin(self) -> None:
        super().on_message_begin()
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        # A request is in progress from here: no idle timer may close the connection under it (one
        # is armed when a discarded body ends just before these headers, in the same read).
        self._unset_keepalive_if_required()
        super().on_headers_complete()

    def _headers_too_slow(self) -> None:
        """Answer 408 and close: the headers did not arrive within ``header_timeout_s``."""
        self._header_timer = None
        if self.transport.is_closing():
            return
        logger.info(
            "request headers not complete within server.header_timeout_s: 408, connection closed",
            extra={"client": self._peer(), "header_timeout_s": self.header_timeout_s, "status": 408},
        )
        self.transport.write(self._timeout_response())
        self.transport.close()

    def _timeout_response(self) -> bytes:
        """The 408 in the native error shape (``request_id`` null: no request was ever made)."""
        message = f"the request headers did not arrive within {self.header_timeout_s:g} s"
        body = json.dumps(
            {"error": {"type": "request_timeout", "message": message, "request_id": None}}
        ).encode()
        content = [STATUS_LINE[408]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        return b"".join(content)

    # A body answered before it was all in

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # Answered before its body was all in (504 deadline, 413, 401...): uvicorn reads the
            # rest and throws it away, so the connection can be reused, for as long as the client
            # takes, a byte a second included.
            self._discard_timer = self.loop.call_later(self.timeout_keep_alive, self._body_too_slow)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._discard_timer is not None:  # the rest of an answered request's body is in
            self._discard_timer.cancel()
            self._discard_timer = None
            if not self.transport.is_closing() and not self.pipeline:
                # uvicorn armed its idle timer at the answer and each discarded chunk stopped it:
                # without this, the connection would now be idle with no timer at all.
                self._arm_idle_timer()

    def _body_too_slow(self) -> None:
        """Close: the body of a request already answered is still not in after the grace."""
        self._discard_timer = None
        if self.transport.is_closing():
            return
        logger.info(
            "request body still arriving server.keep_alive_timeout_s after its answer: connection closed",
            extra={"client": self._peer(), "keep_alive_timeout_s": self.timeout_keep_alive},
        )
        self.transport.close()

    # A client that reads nothing

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_timeout_s, self._reader_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _reader_stalled(self) -> None:
        """Drop the connection: its client has read nothing of its answer for ``send_timeout_s``."""
        self._send_timer = None
        logger.info(
            "client read none of its answer within server.send_timeout_s: connection dropped",
            extra={"client": self._peer(), "send_timeout_s": self.send_timeout_s},
        )
        self.transport.abort()  # close() would wait for the buffer to drain, that is for ever

    def _arm_idle_timer(self) -> None:
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "-"


def bounded_http_protocol(*, header_timeout_s: float, send_timeout_s: float) -> type[BoundedHttpProtocol]:
    """The connection class to pass as ``uvicorn.Config(http=...)``, with its timeouts.

    uvicorn constructs each connection itself with fixed arguments, so the timeouts travel as class
    attributes of a subclass made here, one per server.
    """

    class Configured(BoundedHttpProtocol):
        pass

    Configured.header_timeout_s = header_timeout_s
    Configured.send_timeout_s = send_timeout_s
    Configured.__name__ = Configured.__qualname__ = BoundedHttpProtocol.__name__
    return Configured
