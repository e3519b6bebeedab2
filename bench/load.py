"""A load generator that costs little CPU: raw HTTP/1.1 over asyncio (uvloop) with keep-alive.

Why not httpx or aiohttp: on a 2-core machine the load generator shares the cores with the
server, so every microsecond it spends per request is taken from the thing measured. This one
writes pre-built request bytes and parses only the status line and ``Content-Length`` of the
answer (tens of microseconds per request); it measures its own CPU time (``RUSAGE_THREAD`` of
the event-loop thread) so the report says what it cost.

Two disciplines:

* **closed loop** (:func:`closed_loop`): ``clients`` connections, each sending its next request
  as soon as the previous answer arrives: throughput at a given concurrency. After ``warmup``
  seconds, requests *completing* within the ``duration`` window are counted; at the end the
  connections are closed (the server drops the queued work of a closed connection) rather than
  waiting for stragglers.
* **open loop** (:func:`open_loop`): requests at pre-computed Poisson arrival times
  (:func:`poisson_schedule`), whatever the server's state, on as many connections as needed.
  Latency is measured from the *scheduled* send time, so a late generator or a backed-up
  server cannot hide queueing delay (no coordinated omission); requests scheduled in the window
  are awaited to the end (up to ``drain_timeout``), so slow answers are not dropped either.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import resource
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Connections the open-loop generator may hold; past it a request counts as an error.
MAX_OPEN_CONNECTIONS = 512


def build_request(
    path: str,
    body: bytes,
    port: int,
    content_type: str = "image/jpeg",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """One complete HTTP/1.1 keep-alive POST, as bytes (``headers``: any more header fields)."""
    return post_head(path, len(body), port, content_type, headers) + body


def post_head(
    path: str,
    length: int,
    port: int,
    content_type: str = "image/jpeg",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """The request line and header fields of :func:`build_request` for a body of ``length`` bytes."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"{extra}Content-Length: {length}\r\n\r\n"
    )
    return head.encode("ascii")


def build_get(path: str, port: int) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode("ascii")


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time; resolves to ``(status, body)``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._waiter is None:
            return
        head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        length = 0
        close = False
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "transfer-encoding":
                raise RuntimeError("chunked answers are not supported by the load generator")
        if len(self._buffer) < end + 4 + length:
            return
        body = bytes(self._buffer[end + 4 : end + 4 + length])
        del self._buffer[: end + 4 + length]
        status = int(head[0].split(" ", 2)[1])
        waiter, self._waiter = self._waiter, None
        if not waiter.done():
            waiter.set_result((status, body))
        if close:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def connect(port: int) -> _Connection:
    _, protocol = await asyncio.get_running_loop().create_connection(_Connection, "127.0.0.1", port)
    return protocol


async def fetch(port: int, path: str) -> tuple[int, bytes]:
    """One GET on a fresh connection (``/metrics`` scrapes)."""
    connection = await connect(port)
    try:
        return await connection.request(build_get(path, port))
    finally:
        connection.close()


# -- statistics -------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of sorted values, linearly interpolated (numpy's default)."""
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * p / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean in milliseconds."""
    ordered = sorted(x * 1000.0 for x in latencies_s)
    return {
        "p50_ms": percentile(ordered, 50),
        "p95_ms": percentile(ordered, 95),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else math.nan,
        "mean_ms": sum(ordered) / len(ordered) if ordered else math.nan,
    }


def poisson_schedule(rate: float, seconds: float, seed: int = 0) -> list[float]:
    """Arrival offsets (seconds from start) of a Poisson process of ``rate`` per second."""
    if rate <= 0:
        return []
    rng = random.Random(seed)
    times: list[float] = []
    t = rng.expovariate(rate)
    while t < seconds:
        times.append(t)
        t += rng.expovariate(rate)
    return times


@dataclass
class Window:
    """What one measured window saw from the client side."""

    kind: str  # "closed" or "open"
    level: float  # clients (closed) or offered requests per second (open)
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int | str, int] = field(default_factory=dict)  # HTTP statuses; gRPC codes by name
    loadgen_cpu_s: float = 0.0

    def record(self, status: int | str, ok: bool, latency_s: float) -> None:
        """One answer: its status counted, its latency kept if it succeeded, else an error."""
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if ok:
            self.latencies_s.append(latency_s)
        else:
            self.errors += 1

    def result(self) -> dict[str, Any]:
        done = len(self.latencies_s)
        return {
            "kind": self.kind,
            "level": self.level,
            "duration_s": self.duration_s,
            "requests": done,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
            "throughput_rps": done / self.duration_s,
            **summarise(self.latencies_s),
            "loadgen_cpu_cores": self.loadgen_cpu_s / self.duration_s,
            "loadgen_cpu_us_per_request": 1e6 * self.loadgen_cpu_s / max(1, done + self.errors),
        }


def _thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


Hook = Callable[[], Awaitable[None]]


async def _noop() -> None:
    return None


async def closed_loop(
    port: int,
    requests: Sequence[bytes],
    clients: int,
    warmup: float,
    duration: float,
    on_start: Hook = _noop,
    on_end: Hook = _noop,
    *,
    disjoint: bool = False,
) -> Window:
    """``clients`` connections in a closed loop; counts completions in the window after ``warmup``.

    ``on_start`` / ``on_end`` run (awaited) at the window's edges: the caller scrapes
    ``/metrics`` and samples the server's CPU there. Client ``i`` sends ``requests[i]``,
    ``requests[i + 1]``, ... (the clients a step apart on one cycle); with ``disjoint``, it sends
    ``requests[i]``, ``requests[i + clients]``, ... instead, so that no two clients send the same
    request (a sequence of distinct images stays distinct, an independent draw stays independent).
    """
    window = Window("closed", clients, duration)
    connections = [await connect(port) for _ in range(clients)]
    opened = list(connections)  # every connection made, closed at the end
    start = time.perf_counter()
    window_start, window_end = start + warmup, start + warmup + duration

    step = clients if disjoint else 1

    async def client(index: int, connection: _Connection) -> None:
        sent = index
        while True:
            raw = requests[sent % len(requests)]
            sent += step
            t0 = time.perf_counter()
            try:
                status, _ = await connection.request(raw)
            except ConnectionError:
                t1 = time.perf_counter()
                if window_start <= t1 <= window_end:
                    window.errors += 1
                connection = await connect(port)
                opened.append(connection)
                continue
            t1 = time.perf_counter()
            if window_start <= t1 <= window_end:
                window.record(status, status == 200, t1 - t0)

    tasks = [asyncio.ensure_future(client(i, c)) for i, c in enumerate(connections)]
    await asyncio.sleep(window_start - time.perf_counter())
    await on_start()
    cpu0 = _thread_cpu()
    await asyncio.sleep(window_end - time.perf_counter())
    window.loadgen_cpu_s = _thread_cpu() - cpu0
    for task in tasks:
        task.cancel()
    for connection in opened:
        connection.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    await on_end()
    return window


async def open_loop(
    port: int,
    requests: Sequence[bytes],
    rate: float,
    warmup: float,
    duration: float,
    on_start: Hook = _noop,
    on_end: Hook = _noop,
    seed: int = 0,
    drain_timeout: float = 30.0,
) -> Window:
    """Poisson arrivals at ``rate``/s; latency from each request's scheduled time."""
    window = Window("open", rate, duration)
    schedule = poisson_schedule(rate, warmup + duration, seed)
    idle: list[_Connection] = [await connect(port) for _ in range(max(4, min(64, int(rate))))]
    opened = list(idle)  # every connection made, closed at the end
    open_count = len(idle)
    start = time.perf_counter() + 0.05
    window_start, window_end = start + warmup, start + warmup + duration
    measured: list[asyncio.Task[None]] = []
    others: list[asyncio.Task[None]] = []

    async def one(index: int, scheduled: float) -> None:
        nonlocal open_count
        counted = window_start <= scheduled < window_end
        connection = None
        while idle and connection is None:
            candidate = idle.pop()
            connection = None if candidate.closed else candidate
        if connection is None:
            if open_count >= MAX_OPEN_CONNECTIONS:
                if counted:
                    window.errors += 1
                return
            open_count += 1
            connection = await connect(port)
            opened.append(connection)
        try:
            status, _ = await connection.request(requests[index % len(requests)])
        except ConnectionError:
            open_count -= 1
            if counted:
                window.errors += 1
            return
        done = time.perf_counter()
        idle.append(connection)
        if counted:
            window.record(status, status == 200, done - scheduled)

    started_window = False
    cpu0 = 0.0
    for index, offset in enumerate(schedule):
        scheduled = start + offset
        if not started_window and scheduled >= window_start:
            await asyncio.sleep(max(0.0, window_start - time.perf_counter()))
            await on_start()
            cpu0 = _thread_cpu()
            started_window = True
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(index, scheduled))
        (measured if window_start <= scheduled < window_end else others).append(task)
    if not started_window:
        await on_start()
        cpu0 = _thread_cpu()
    await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
    pending = [t for t in measured if not t.done()]
    if pending:
        _, still = await asyncio.wait(pending, timeout=drain_timeout)
        window.errors += len(still)  # not answered within the drain timeout: counted as failed
    window.loadgen_cpu_s = _thread_cpu() - cpu0
    for task in measured + others:
        task.cancel()
    await asyncio.gather(*measured, *others, return_exceptions=True)
    for connection in opened:
        connection.close()
    await on_end()
    return window


def run(coroutine: Awaitable[Any]) -> Any:
    """Run on uvloop when installed (it is a server dependency), else asyncio's default loop."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(coroutine)  # type: ignore[arg-type]
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def now() -> float:
    return time.perf_counter()
