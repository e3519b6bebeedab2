"""SIGTERM under load: every request that reached the server gets an HTTP answer.

A real server process with a slow colour model (each forward pass sleeps, small batches, so
requests queue) and 32 client threads posting images in a loop, half of them on a new connection
for every request, half on one keep-alive connection each; SIGTERM soon after they start.
A request that got a connection must end with a status: 200 when the service took it before the
drain, 503 ``shutting_down`` with ``Connection: close`` and ``Retry-After`` once draining. The only
failure a client may see is ``ConnectError`` (the listener was closed before it connected); a reset
or a connection closed without an answer (``ReadError``, ``WriteError``, ``RemoteProtocolError``)
means the server dropped a request it had accepted at the TCP level.

Threads (not asyncio tasks) on purpose: 32 of them contend for the GIL and for the two cores with
the server, so connections sit in the kernel's accept queue and requests in socket buffers unread
when the signal arrives, the case that used to be reset. Clients stop at their first answer that
is not 200, so they do not hammer the listener while it closes. Every wait is bounded.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import ServerProcess, encode
from tests.repository import add_colour_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

MODEL = "slow"
PATH = f"/v1/models/{MODEL}/predict"
GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")
HEADERS = {"content-type": "image/png"}
CLIENTS = 32
DRAIN_TIMEOUT_S = 5.0  # configs/test.yaml
CLIENT_TIMEOUT_S = 20.0  # longer than any drain here: a client never gives up before the server
EXIT_SLACK_S = 10.0  # start-up of the drain, one forward pass, unload, a loaded machine


@dataclass
class Outcome:
    """One request: its status (or the transport error's name) and what a 503 must carry."""

    result: int | str
    kind: str = ""  # "fresh" or "keep-alive": the client's connections
    connection: str = ""
    retry_after: str = ""
    error_type: str = ""


@dataclass
class Results:
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def count(self) -> Counter[int | str]:
        with self.lock:
            return Counter(o.result for o in self.outcomes)

    def by_kind(self) -> dict[str, Counter[int | str]]:
        with self.lock:
            kinds = {o.kind for o in self.outcomes}
            return {k: Counter(o.result for o in self.outcomes if o.kind == k) for k in sorted(kinds)}


def post(client: httpx.Client, path: str = PATH) -> Outcome:
    """One request; a transport error becomes its class name (``ConnectError``, ``ReadError``...)."""
    try:
        response = client.post(path, content=GREEN, headers=HEADERS)
    except httpx.TransportError as exc:
        return Outcome(type(exc).__name__)
    error_type = ""
    if response.status_code != 200:
        try:
            error_type = str(json.loads(response.content)["error"]["type"])
        except (ValueError, KeyError, TypeError):
            error_type = "<not the standard error body>"
    return Outcome(
        response.status_code,
        connection=response.headers.get("connection", ""),
        retry_after=response.headers.get("retry-after", ""),
        error_type=error_type,
    )


def get(client: httpx.Client, path: str) -> Outcome:
    """A GET of ``/ready`` as an outcome, its ``status`` field as the error type."""
    try:
        response = client.get(path)
    except httpx.TransportError as exc:
        return Outcome(type(exc).__name__)
    return Outcome(
        response.status_code,
        connection=response.headers.get("connection", ""),
        error_type=str(response.json().get("status")),
    )


def client_loop(url: str, keep_alive: bool, results: Results, stop: threading.Event) -> None:
    """Post until the first answer that is not 200 (or until told to stop)."""
    limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
    with httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        while not stop.is_set():
            outcome = post(client)
            outcome.kind = "keep-alive" if keep_alive else "fresh"
            results.add(outcome)
            if outcome.result != 200:
                return


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    # About 80 inputs/s: 32 clients keep a queue of a few batches, so the drain has work to do.
    add_colour_model(tmp_path / "repo", MODEL, delay_s=0.05, settings={"max_batch_size": 4})
    return tmp_path / "repo"


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """The servers a test started; stopped at the end, so a failed test leaves no process behind."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop(timeout=10)


def start(servers: list[ServerProcess], repository: Path, log: Path, **env: str) -> ServerProcess:
    server = ServerProcess(repository, env=env)
    servers.append(server)
    return server.start(log, timeout=60)


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def stop_under_load(
    server: ServerProcess, delay_s: float, signalled: list[float] | None = None
) -> tuple[Results, float]:
    """Start the clients, SIGTERM once answers flow, wait for the exit; (results, seconds to exit).

    The time just before the signal is appended to ``signalled`` (for a thread that waits on it).
    """
    assert server.process is not None
    results, stop = Results(), threading.Event()
    threads = [
        threading.Thread(target=client_loop, args=(server.url, i % 2 == 1, results, stop), daemon=True)
        for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    # "Shortly after they start": once a few answers came back, with many requests still open.
    assert wait_for(lambda: results.count()[200] >= 4, 30), f"no load: {results.count()}"
    before = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    if signalled is not None:
        signalled.append(before)
    server.process.wait(DRAIN_TIMEOUT_S + delay_s + EXIT_SLACK_S)
    exited_after = time.monotonic() - before
    stop.set()  # clients still looping would only meet a closed port now
    for thread in threads:
        thread.join(CLIENT_TIMEOUT_S + 5)
    assert not any(t.is_alive() for t in threads), "a client is still waiting for an answer"
    return results, exited_after


def check_every_request_answered(server: ServerProcess, results: Results) -> None:
    counts = results.count()
    dropped = {k: n for k, n in counts.items() if k not in (200, 503, "ConnectError")}
    assert not dropped, f"connected but not answered: {results.by_kind()}\n{server.log()[-4000:]}"
    assert counts[200] >= 4
    for outcome in results.outcomes:
        if outcome.result == 503:
            assert outcome.error_type == "shutting_down", outcome
            assert outcome.connection.lower() == "close", outcome
            assert outcome.retry_after.isdigit(), outcome
    assert server.process is not None and server.process.returncode == 0, server.log()[-4000:]
    log = server.log()
    assert "Traceback" not in log, log[-4000:]
    assert '"stopped"' in log


def test_sigterm_under_load_answers_every_request_that_got_a_connection(
    repository: Path, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    server = start(servers, repository, tmp_path / "server.log")
    results, exited_after = stop_under_load(server, delay_s=0.0)
    check_every_request_answered(server, results)
    assert exited_after < DRAIN_TIMEOUT_S + EXIT_SLACK_S


def test_shutdown_delay_keeps_the_listener_answering_503_then_closes_it(
    repository: Path, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    delay_s = 2.0
    env = {"IE_SERVER__SHUTDOWN_DELAY_S": str(delay_s)}
    server = start(servers, repository, tmp_path / "server.log", **env)
    probes: list[tuple[float, str, Outcome]] = []  # (seconds from the signal to the outcome, path, ...)
    signalled: list[float] = []

    def probe() -> None:
        """After the signal: new requests on new connections, until the listener refuses one."""
        if not wait_for(lambda: bool(signalled), 60):
            return
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
            while time.monotonic() - signalled[0] < DRAIN_TIMEOUT_S + delay_s + EXIT_SLACK_S:
                for path, send in ((PATH, post), ("/ready", get)):
                    outcome = send(client, path)
                    probes.append((time.monotonic() - signalled[0], path, outcome))
                    if outcome.result == "ConnectError":
                        return
                time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    results, exited_after = stop_under_load(server, delay_s=delay_s, signalled=signalled)
    prober.join(CLIENT_TIMEOUT_S + 5)
    check_every_request_answered(server, results)
    assert exited_after < DRAIN_TIMEOUT_S + delay_s + EXIT_SLACK_S

    assert {o.result for _, _, o in probes} <= {503, "ConnectError"}, probes
    answered = [(path, o) for _, path, o in probes if o.result == 503]
    assert {path for path, _ in answered} == {PATH, "/ready"}, f"not answered during the delay: {probes}"
    for path, outcome in answered:
        assert outcome.error_type == "shutting_down", outcome
        assert outcome.connection.lower() == "close", outcome
        assert path == "/ready" or outcome.retry_after.isdigit(), outcome
    # The listener stays open for the whole delay (the server got the signal after ``before``,
    # so it can only close it later), then closes before the process exits.
    refused = [t for t, _, o in probes if o.result == "ConnectError"]
    assert refused, f"the listener never closed: {probes}"
    assert refused[0] >= delay_s, probes
