"""Network faults from the client side: clients that hang up, crawl, idle or never read.

Two real server processes on loopback, driven through raw sockets (the faults are in the bytes and
their timing, which an HTTP client library smooths over):

* ``faults``: ``colour`` (a fast model) and ``slow`` (a 1 s forward pass, batches of one, so a
  second request waits in its queue), with short timeouts (``header_timeout_s`` 2,
  ``keep_alive_timeout_s`` 3, ``send_timeout_s`` 3);
* ``limited``: ``colour`` with ``max_connections`` 50 and a long keep-alive, so idle connections
  stay while the limit is reached.

The faults and what each test checks:

* a client that disconnects while its request is queued, during its forward pass, or while its
  answer is written: 499 where the server notices (queued, forward pass), 200 where the answer was
  already on its way; a pipelining client that reads nothing of large answers and hangs up, or
  never reads and stays: no traceback, the connection dropped after ``send_timeout_s``;
* slow senders: headers a byte a second are answered 408 and closed at ``header_timeout_s``; a
  body a byte a second is answered 504 at its deadline and its connection closed
  ``keep_alive_timeout_s`` later; a connection that sends nothing is closed at
  ``keep_alive_timeout_s``; ordinary requests keep their latency meanwhile;
* many idle keep-alive connections: the server answers others promptly and closes each idle one
  after ``keep_alive_timeout_s``; past ``max_connections`` a request gets 503 at once, not a hang.

After each: no 5xx in ``inference_engine_requests_total``, no traceback or ERROR line in the log,
``/ready`` and an ordinary request 200. Every loop is bounded in count and time; the module takes
about 26 s on a 2-core machine, 29 s with a second copy running beside it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import selectors
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn

from inference_engine.drain import DrainingServer
from inference_engine.protocol import BoundedHttpProtocol, bounded_http_protocol
from tests.helpers import ServerProcess, encode, metric_value
from tests.repository import add_colour_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FAST, SLOW = "colour", "slow"
SLOW_PASS_S = 1.0
HEADER_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 3
SEND_TIMEOUT_S = 3.0
MAX_CONNECTIONS = 50
IDLE_CONNECTIONS = 300
#: Pipelined requests for /openapi.json (about 19 KB each): far more than loopback's buffers hold.
PIPELINED = 1000
#: What a busy machine may add to a timer before the effect shows on the socket.
SLACK_S = 2.0
RED = encode(np.full((32, 32, 3), (250, 10, 10), np.uint8), "PNG")
REQUESTS = "inference_engine_requests_total"
PREDICT_ROUTE = "/v1/models/{name}/predict"


def predict_request(model: str) -> bytes:
    head = (
        f"POST /v1/models/{model}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(RED)}\r\n\r\n"
    )
    return head.encode() + RED


GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    """Both servers, started side by side (each start is mostly imports: CPU the other can use)."""
    repo = tmp_path_factory.mktemp("network-faults-repository")
    add_colour_model(repo, FAST)
    add_colour_model(repo, SLOW, delay_s=SLOW_PASS_S, settings={"max_batch_size": 1})
    limited_repo = tmp_path_factory.mktemp("network-limit-repository")
    add_colour_model(limited_repo, FAST)
    logs = tmp_path_factory.mktemp("network-faults-logs")
    processes = {
        "faults": ServerProcess(
            repo,
            env={
                "IE_SERVER__HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                "IE_SERVER__KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE_S),
                "IE_SERVER__SEND_TIMEOUT_S": str(SEND_TIMEOUT_S),
            },
        ),
        "limited": ServerProcess(
            limited_repo,
            env={"IE_SERVER__MAX_CONNECTIONS": str(MAX_CONNECTIONS), "IE_SERVER__KEEP_ALIVE_TIMEOUT_S": "60"},
        ),
    }
    with ThreadPoolExecutor(len(processes)) as pool:
        started = [
            pool.submit(process.start, logs / f"{name}.log", timeout=90)
            for name, process in processes.items()
        ]
        try:
            for future in started:
                future.result()
        except BaseException:
            for process in processes.values():
                if process.process is not None:
                    process.stop()
            raise
    yield processes
    for process in processes.values():
        process.stop()


@pytest.fixture
def faults(servers: dict[str, ServerProcess]) -> Iterator[ServerProcess]:
    yield servers["faults"]
    assert_still_serving(servers["faults"])


@pytest.fixture
def limited(servers: dict[str, ServerProcess]) -> Iterator[ServerProcess]:
    yield servers["limited"]
    assert_still_serving(servers["limited"])


# -- helpers --------------------------------------------------------------------------------------


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a ``Content-Length`` body: status, headers, body."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the middle of a response body")
        body += chunk
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed (EOF or reset), reading and dropping whatever came before."""
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def wait_closed(socks: list[socket.socket], timeout: float) -> dict[socket.socket, float]:
    """When (``time.monotonic()``) the server closed each socket, waiting at most ``timeout``."""
    closed: dict[socket.socket, float] = {}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, min(0.2, deadline - time.monotonic()))):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if closed_by_server(sock):
                    closed[sock] = time.monotonic()
                    selector.unregister(sock)
    return closed


def reset_close(sock: socket.socket) -> None:
    """Close with a TCP reset rather than a FIN (a client killed, a proxy giving up)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def metrics(server: ServerProcess) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=10).text


def counted(server: ServerProcess, status: str, **labels: str) -> float:
    return metric_value(metrics(server), REQUESTS, status=status, **labels)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


#: 5xx answers a test provoked on purpose (the slow body's 504), by status, per server port.
EXPECTED_5XX: collections.Counter[tuple[int, str]] = collections.Counter()


def server_errors(text: str) -> dict[str, float]:
    """Every 5xx counted in ``inference_engine_requests_total``, by status."""
    seen: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(REQUESTS + "{") and 'status="5' in line:
            status = line.split('status="', 1)[1][:3]
            seen[status] = seen.get(status, 0.0) + float(line.rpartition(" ")[2])
    return seen


def log_records(server: ServerProcess) -> list[dict[str, object]]:
    records = []
    for line in server.log().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def assert_still_serving(server: ServerProcess) -> None:
    """No 5xx counted, no traceback or ERROR logged, and the server answers as before."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/ready").status_code == 200
        answer = client.post(f"/v1/models/{FAST}/predict", content=RED, headers={"content-type": "image/png"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] == "red"
        expected = {status: float(n) for (port, status), n in EXPECTED_5XX.items() if port == server.port}
        assert server_errors(client.get("/metrics").text) == expected
    log = server.log()
    assert "Traceback" not in log, log[-4000:]
    errors = [r for r in log_records(server) if r.get("level") in ("ERROR", "CRITICAL")]
    assert not errors, errors


class LatencyProbe:
    """Ordinary predict requests, one after another on a thread, until stopped; their latencies."""

    def __init__(self, server: ServerProcess, pause_s: float = 0.05) -> None:
        self.server = server
        self.pause_s = pause_s
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            for _ in range(2000):  # bounded; stopped long before
                if self._stop.is_set():
                    return
                started = time.monotonic()
                answer = client.post(
                    f"/v1/models/{FAST}/predict", content=RED, headers={"content-type": "image/png"}
                )
                self.latencies.append(time.monotonic() - started)
                self.statuses.append(answer.status_code)
                self._stop.wait(self.pause_s)


def baseline_latency(server: ServerProcess, count: int = 10) -> float:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        times = []
        for _ in range(count):
            started = time.monotonic()
            client.post(f"/v1/models/{FAST}/predict", content=RED, headers={"content-type": "image/png"})
            times.append(time.monotonic() - started)
    return statistics.median(times)


# -- 1. disconnects at every stage ---------------------------------------------------------------


def test_a_client_gone_while_queued_is_a_499_and_costs_no_forward_pass(faults: ServerProcess) -> None:
    """Two requests hold the slow model (one in its pass, one queued) so a third waits a second at
    least; it hangs up there, and its input is dropped when its turn comes instead of run."""
    dropped = "inference_engine_dropped_inputs_total"
    text = metrics(faults)
    before_499 = metric_value(text, REQUESTS, model=SLOW, status="499")
    before_dropped = metric_value(text, dropped, model=SLOW, reason="cancelled")
    with ThreadPoolExecutor(2) as pool:
        blockers = [
            pool.submit(
                httpx.post,
                f"{faults.url}/v1/models/{SLOW}/predict",
                content=RED,
                headers={"content-type": "image/png"},
                timeout=30,
            )
            for _ in range(2)
        ]
        wait_for(
            lambda: metric_value(metrics(faults), "inference_engine_in_flight_requests", model=SLOW) >= 2,
            10,
            "the two blocking requests in flight",
        )
        with connect(faults.port) as queued:
            queued.sendall(predict_request(SLOW))
            wait_for(
                lambda: metric_value(metrics(faults), "inference_engine_queue_depth", model=SLOW) >= 2,
                5,
                "the third request queued behind the second",
            )
        assert [blocker.result(timeout=30).status_code for blocker in blockers] == [200, 200]
    wait_for(
        lambda: counted(faults, "499", model=SLOW) - before_499 == 1, 10, "the queued request counted as 499"
    )
    wait_for(
        lambda: metric_value(metrics(faults), dropped, model=SLOW, reason="cancelled") - before_dropped == 1,
        10,
        "the queued input dropped before its forward pass",
    )


def test_a_client_gone_during_the_forward_pass_is_a_499(faults: ServerProcess) -> None:
    text = metrics(faults)
    before_499 = metric_value(text, REQUESTS, model=SLOW, status="499")
    before_passes = metric_value(text, "inference_engine_inference_duration_seconds_count", model=SLOW)
    for close in (socket.socket.close, reset_close):  # a FIN, then a reset
        sock = connect(faults.port)
        sock.sendall(predict_request(SLOW))
        wait_for(
            lambda: (
                metric_value(metrics(faults), "inference_engine_in_flight_requests", model=SLOW) >= 1
                and metric_value(metrics(faults), "inference_engine_queue_depth", model=SLOW) == 0
            ),
            10,
            "the request in its forward pass",
        )
        time.sleep(0.2)  # well inside the 1 s pass
        close(sock)
        wait_for(
            lambda: metric_value(metrics(faults), "inference_engine_in_flight_requests", model=SLOW) == 0,
            10,
            "the request given up",
        )
    wait_for(lambda: counted(faults, "499", model=SLOW) - before_499 == 2, 10, "both counted as 499")
    # The passes ran to their end (a forward pass cannot be interrupted) and their results were dropped.
    wait_for(
        lambda: (
            metric_value(metrics(faults), "inference_engine_inference_duration_seconds_count", model=SLOW)
            - before_passes
            >= 2
        ),
        10,
        "both forward passes finished",
    )


def test_a_client_gone_as_its_answer_is_written_is_a_499_or_a_200(faults: ServerProcess) -> None:
    """Clients of the fast model that read nothing: gone at once, or gone once the answer is there.

    A client that closes right after sending is noticed before its body is read (the disconnect
    comes in with it): 499. One that closes after the answer reached its socket, unread, resets the
    connection, but the server wrote the answer to the kernel already and counts what it sent: 200.
    Between the two (the answer ready but not yet written) is a window of microseconds, counted
    either way; neither is a 5xx.
    """
    route = {"route": PREDICT_ROUTE, "model": FAST}
    before = {status: counted(faults, status, **route) for status in ("200", "499")}
    rounds = 20
    for i in range(rounds):  # gone at once, with a FIN or a reset
        sock = connect(faults.port)
        sock.sendall(predict_request(FAST))
        if i % 2:
            reset_close(sock)
        else:
            sock.close()
    unread = 10
    for _ in range(unread):  # gone once the answer is there, unread: a reset
        sock = connect(faults.port)
        sock.sendall(predict_request(FAST))
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            assert selector.select(timeout=10), "no answer"
        sock.close()

    def all_counted() -> bool:
        return sum(counted(faults, s, **route) - before[s] for s in before) >= rounds + unread

    wait_for(all_counted, 15, f"all {rounds + unread} counted as 200 or 499")
    seen = {status: counted(faults, status, **route) - before[status] for status in before}
    assert sum(seen.values()) == rounds + unread, seen
    assert seen["200"] >= unread, seen  # the unread answers at least: the server could not know
    print(f"{rounds} gone at once and {unread} gone with the answer unread, fast model: {seen}")


def test_a_pipelining_client_that_never_reads_is_dropped_without_a_traceback(faults: ServerProcess) -> None:
    """A thousand pipelined requests whose ~19 KB answers nobody reads fill every buffer.

    One client hangs up while a request is blocked writing (uvicorn told only the last request read
    that the connection was lost, so the blocked one wrote to a closed transport: a traceback); the
    other never reads and stays, and is dropped at ``send_timeout_s``.
    """
    pipelined = b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * PIPELINED
    clients = []
    for _ in range(2):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", faults.port))
        sock.sendall(pipelined)
        clients.append(sock)
    leaver, stayer = clients
    started = time.monotonic()
    time.sleep(1.0)  # both blocked: the kernel's buffers and the transport's are full
    leaver.close()
    # The stayer reads nothing until the server should have dropped it, then reads what was sent.
    time.sleep(max(0.0, started + SEND_TIMEOUT_S + SLACK_S - time.monotonic()))
    received = b""
    stayer.settimeout(10)
    with contextlib.suppress(ConnectionResetError):
        for _ in range(100_000):  # bounded: ends at EOF
            chunk = stayer.recv(1 << 20)
            if not chunk:
                break
            received += chunk
    stayer.close()
    answers = received.count(b"HTTP/1.1 200 OK")
    assert 0 < answers < PIPELINED, f"the stayer got {answers} answers: it should have been dropped"
    dropped = [
        r
        for r in log_records(faults)
        if r.get("logger") == "inference_engine.protocol" and "send_timeout_s" in r
    ]
    assert dropped, "no log line for the dropped connection"
    print(f"never-reading pipeliner: dropped after {answers} answers of {PIPELINED} reached it")


# -- 2. slow senders -----------------------------------------------------------------------------


def test_slow_senders_are_cut_off_and_others_keep_their_latency(faults: ServerProcess) -> None:
    """Headers (slowloris) and a body, a byte a second, and a connection that sends nothing."""
    baseline = baseline_latency(faults)
    slowloris_count = 50
    header = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    body_head = (
        f"POST /v1/models/{FAST}/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        "X-Request-Timeout-Ms: 1500\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    slowloris = [connect(faults.port) for _ in range(slowloris_count)]
    silent = connect(faults.port)
    slow_body = connect(faults.port)
    slow_body.sendall(body_head)
    opened = time.monotonic()
    status: dict[socket.socket, bytes] = {}  # what each slow socket was answered
    closed_at: dict[socket.socket, float] = {}
    answered_at: dict[socket.socket, float] = {}
    every = [*slowloris, slow_body, silent]
    with LatencyProbe(faults) as probe, selectors.DefaultSelector() as selector:
        for sock in every:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        sent = 0
        next_byte = opened
        deadline = opened + 1.5 + KEEP_ALIVE_S + 2 * SLACK_S
        while len(closed_at) < len(every) and time.monotonic() < deadline:
            if time.monotonic() >= next_byte and sent < len(header):  # one byte a second each
                for sock in (*slowloris, slow_body):
                    if sock not in closed_at:
                        with contextlib.suppress(OSError):
                            sock.send(header[sent : sent + 1] if sock is not slow_body else b"x")
                sent += 1
                next_byte += 1.0
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    status.setdefault(sock, data[:12])
                    answered_at.setdefault(sock, time.monotonic())
                else:
                    closed_at[sock] = time.monotonic()
                    selector.unregister(sock)
    for sock in every:
        sock.close()

    assert set(closed_at) == set(every), f"{len(every) - len(closed_at)} slow connection(s) still open"
    header_closes = [closed_at[sock] - opened for sock in slowloris]
    assert all(status.get(sock) == b"HTTP/1.1 408" for sock in slowloris), set(status.values())
    assert min(header_closes) >= HEADER_TIMEOUT_S - 0.1, header_closes
    assert max(header_closes) <= HEADER_TIMEOUT_S + SLACK_S, header_closes
    assert status.get(slow_body) == b"HTTP/1.1 504"
    EXPECTED_5XX[faults.port, "504"] += 1  # deadline_exceeded: the answer this fault is due
    body_answer = answered_at[slow_body] - opened
    assert 1.4 <= body_answer <= 1.5 + SLACK_S, body_answer
    after_answer = closed_at[slow_body] - answered_at[slow_body]
    assert KEEP_ALIVE_S - 0.1 <= after_answer <= KEEP_ALIVE_S + SLACK_S, after_answer
    assert silent not in status  # closed without a word, as an idle keep-alive connection is
    silent_close = closed_at[silent] - opened
    assert KEEP_ALIVE_S - 0.1 <= silent_close <= KEEP_ALIVE_S + SLACK_S, silent_close

    assert probe.statuses and set(probe.statuses) == {200}, probe.statuses
    during = statistics.median(probe.latencies)
    assert max(probe.latencies) < 1.5, probe.latencies
    assert during < max(0.25, 5 * baseline), (baseline, during)
    timeouts = [r for r in log_records(faults) if r.get("status") == 408 and "client" in r]
    assert len(timeouts) >= slowloris_count
    print(
        f"slowloris x{slowloris_count}: 408 and closed at "
        f"{min(header_closes):.2f}-{max(header_closes):.2f} s; "
        f"slow body: 504 at {body_answer:.2f} s, closed {after_answer:.2f} s later; silent: closed at "
        f"{silent_close:.2f} s; {len(probe.latencies)} ordinary requests meanwhile, median "
        f"{during * 1000:.1f} ms (before: {baseline * 1000:.1f} ms), max {max(probe.latencies) * 1000:.1f} ms"
    )


# -- 3. many idle keep-alive connections ---------------------------------------------------------


def test_idle_keep_alive_connections_are_closed_and_do_not_slow_others(faults: ServerProcess) -> None:
    socks = [connect(faults.port) for _ in range(IDLE_CONNECTIONS)]
    for sock in socks:
        sock.sendall(GET_HEALTH)
    answered: dict[socket.socket, float] = {}
    for sock in socks:
        code, headers, _ = read_response(sock)
        assert code == 200
        assert headers.get("connection") != "close"
        answered[sock] = time.monotonic()
    all_open_since = max(answered.values())

    latency = baseline_latency(faults, count=10)
    assert latency < 0.5, latency
    still_open = time.monotonic() < min(answered.values()) + KEEP_ALIVE_S - 0.1
    if still_open:  # checked only while no keep-alive timer can have fired
        assert not any(closed_by_server(sock) for sock in socks)

    closed = wait_closed(socks, KEEP_ALIVE_S + 2 * SLACK_S + (time.monotonic() - all_open_since))
    for sock in socks:
        sock.close()
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} idle connection(s) never closed"
    idle_for = [closed[sock] - answered[sock] for sock in socks]
    assert min(idle_for) >= KEEP_ALIVE_S - 0.1, min(idle_for)
    assert max(idle_for) <= KEEP_ALIVE_S + SLACK_S, max(idle_for)
    print(
        f"{IDLE_CONNECTIONS} idle keep-alive connections: median predict latency {latency * 1000:.1f} ms "
        f"with all open; closed {min(idle_for):.2f}-{max(idle_for):.2f} s after their answer"
    )


def test_past_max_connections_a_request_gets_503_at_once(limited: ServerProcess) -> None:
    held = [connect(limited.port) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:  # every one of them served, and kept open
            sock.sendall(GET_HEALTH)
            code, _, _ = read_response(sock)
            assert code == 200
        refused = []
        for _ in range(3):
            with connect(limited.port) as extra:
                started = time.monotonic()
                extra.sendall(GET_HEALTH)
                code, headers, _ = read_response(extra, timeout=5)
                refused.append(time.monotonic() - started)
                assert code == 503
                assert headers.get("connection") == "close"
        assert max(refused) < 1.0, refused
        # The held ones are still served, once the server has let go of the refused ones: uvloop
        # runs close callbacks after reads, so one refused a moment ago may still count.
        time.sleep(0.2)
        held[0].sendall(GET_HEALTH)
        assert read_response(held[0])[0] == 200
        for sock in held[:5]:
            sock.close()

        def served_again() -> bool:
            with connect(limited.port) as sock:
                sock.sendall(GET_HEALTH)
                return read_response(sock, timeout=5)[0] == 200

        wait_for(served_again, 10, "a new connection served once some closed")
    finally:
        for sock in held:
            sock.close()
    print(f"past {MAX_CONNECTIONS} connections: 503 in {max(refused) * 1000:.1f} ms at most")


# -- the drain builds the same connections -------------------------------------------------------


def test_connections_accepted_during_the_drain_have_the_same_timeouts() -> None:
    protocol = bounded_http_protocol(header_timeout_s=1.5, send_timeout_s=2.5)

    async def app(scope: object, receive: object, send: object) -> None:  # pragma: no cover
        raise AssertionError("not called")

    config = uvicorn.Config(app, http=protocol, log_config=None)
    config.load()
    server = DrainingServer(config, None, drain_timeout_s=1, shutdown_delay_s=0)  # type: ignore[arg-type]
    server.lifespan = config.lifespan_class(config)

    async def build() -> object:
        return server._connection()

    connection = asyncio.run(build())
    assert isinstance(connection, BoundedHttpProtocol)
    assert type(connection) is protocol
    assert connection.header_timeout_s == 1.5
    assert connection.send_timeout_s == 2.5
