"""Process faults: the server process stalled, killed and restarted, or signalled twice, under load.

Each test runs real ``inference-engine serve`` processes on loopback (a colour model with a short
forward pass) and client threads that record every request: when it was sent, when it ended, and
its HTTP status or the name of the transport error that ended it.

* **SIGSTOP, then SIGCONT** (a long GC pause, CPU throttling, a debugger): no request is lost.
  Every request gets an HTTP answer, 200, or 504 ``deadline_exceeded`` when its own deadline
  passed during the stall (a request the server had not read before the stop gets 200: its
  deadline counts from its arrival); none ends later than a slack after its deadline or the
  resume, whichever comes last. Once resumed, requests succeed in their normal time again, the
  queue empties, ``/ready`` is 200 and the metrics count no 500.
* **SIGKILL, and a new process on the same port** at once: the project's clients (sync and
  async) see no failed call; their retries carry them over the connections lost with the
  process (retried because inference is idempotent), the refused connections, and the 503s of a
  loading model. They are configured as a user who must ride out a restart of the only server
  would: the call's timeout as the retry budget, and no circuit breaker (with the defaults, calls
  fail within 0.3 s and the breaker then refuses calls for its 10 s cool-down).
* **A second SIGTERM (or SIGINT) during the drain**: the process exits at once with status 143;
  only the requests in flight at that moment lose their connection, the others were answered
  (200 before the first signal, 503 ``shutting_down`` after it).

Every loop is bounded in count and in time; the module takes about 20 s on an idle 2-core
machine, 30 s with a second copy running beside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from inference_engine.client import (
    AsyncInferenceClient,
    CircuitBreaker,
    InferenceClient,
    InferenceError,
    RetryPolicy,
)
from inference_engine.drain import EXIT_FORCED
from tests.helpers import ServerProcess, encode, metric_value
from tests.repository import add_colour_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

MODEL = "colour"
PATH = f"/v1/models/{MODEL}/predict"
GREEN = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
PAUSE_S = 0.02  # between one client's requests: a pace that leaves the 2 cores to the server
MAX_REQUESTS = 5000  # per client: a bound on every loop, far above what a test sends
WAIT_S = 30.0  # the longest any test waits for a condition (a busy machine)
#: Transport errors that mean a connection was lost with a request on it (not refused).
LOST = {"ReadError", "WriteError", "RemoteProtocolError"}


# -- what the clients saw ------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """One request (or one client call, retries included) and how it ended."""

    client: str
    sent_at: float
    done_at: float
    result: int | str  # the HTTP status, or the class name of the error that ended it
    error: str = ""  # the error ``type`` of a non-200 answer, or the error's message
    deadline_s: float = 0.0

    @property
    def seconds(self) -> float:
        return self.done_at - self.sent_at


@dataclass
class Recorder:
    """Every record, and a condition to wait on for the next one."""

    records: list[Record] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def add(self, record: Record) -> None:
        with self.changed:
            self.records.append(record)
            self.changed.notify_all()

    def snapshot(self) -> list[Record]:
        with self.changed:
            return list(self.records)

    def wait_for(self, condition: Callable[[list[Record]], bool], what: str, timeout: float = WAIT_S) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: condition(self.records), timeout):
                raise AssertionError(f"{what}: not within {timeout} s; last records: {self.records[-8:]}")

    def spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def close(self, timeout: float = WAIT_S) -> None:
        """Stop the clients; each ends its request in flight first (bounded by its own timeout)."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"client threads still running after {timeout} s: {alive}"


def counts(records: list[Record]) -> Counter[str]:
    """Results as ``"200"``, ``"504 deadline_exceeded"``, ``"ReadError"``: for messages and reports."""
    return Counter(
        f"{r.result} {r.error}".strip() if isinstance(r.result, int) else str(r.result) for r in records
    )


def error_type(response: httpx.Response) -> str:
    if response.status_code == 200:
        return ""
    try:
        return str(json.loads(response.content)["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "<not the standard error body>"


def http_client(
    recorder: Recorder,
    url: str,
    name: str,
    *,
    deadline_ms: int | None = None,
    fresh: bool = False,
    timeout_s: float = 20.0,
    stop_on_transport_error: bool = False,
) -> Callable[[], None]:
    """A plain HTTP client posting in a loop: keep-alive, or a new connection per request."""
    headers = {"Content-Type": "image/png"}
    if deadline_ms is not None:
        headers[TIMEOUT_HEADER] = str(deadline_ms)
    deadline_s = (deadline_ms or 0) / 1000

    def run() -> None:
        limits = httpx.Limits(max_keepalive_connections=0 if fresh else 1)
        with httpx.Client(base_url=url, timeout=timeout_s, limits=limits, headers=headers) as client:
            for n in range(MAX_REQUESTS):
                if recorder.stop.is_set():
                    return
                sent_at = time.monotonic()
                try:  # the request id names the client in the server's access log
                    response = client.post(PATH, content=GREEN, headers={"X-Request-ID": f"{name}-{n}"})
                except httpx.TransportError as exc:
                    recorder.add(Record(name, sent_at, time.monotonic(), type(exc).__name__, str(exc)[:200]))
                    if stop_on_transport_error:
                        return
                else:
                    done_at = time.monotonic()
                    recorder.add(
                        Record(name, sent_at, done_at, response.status_code, error_type(response), deadline_s)
                    )
                recorder.stop.wait(PAUSE_S)

    return run


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """The servers a test started; stopped at the end, so a failed test leaves no process behind."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        assert server.process is not None
        if server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)  # in case a test failed while it was stopped
        server.stop(timeout=10)


def start(
    servers: list[ServerProcess], repo: Path, log: Path, *, port: int = 0, wait_ready: bool = True, **env: str
) -> ServerProcess:
    server = ServerProcess(repo, env=env, port=port)
    servers.append(server)
    return server.start(log, wait_ready=wait_ready, timeout=60)


def pid(server: ServerProcess) -> int:
    assert server.process is not None
    return server.process.pid


def scrape(server: ServerProcess) -> str:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        return client.get("/metrics").text


def poll(check: Callable[[], bool], what: str, timeout: float = WAIT_S, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(interval)


# -- SIGSTOP / SIGCONT -----------------------------------------------------------------------------

STALL_S = 2.0
PATIENT_MS = 10_000  # outlives the stall: answered 200 after it
IMPATIENT_MS = 1_000  # shorter than the stall: 504 when the stall caught it in the server
SLACK_S = 3.0  # an answer's lateness past its deadline or the resume, on a busy machine
SETTLE_S = 1.0  # after the resume, before requests must be back to normal
NORMAL_S = 2.5  # the longest a request sent after that may take (normally ~0.05 s)


def test_sigstop_then_sigcont_loses_no_request(
    servers: list[ServerProcess], tmp_path: Path, report: Callable[[str], None]
) -> None:
    add_colour_model(tmp_path / "repo", MODEL, delay_s=0.02, settings={"max_batch_size": 4})
    server = start(servers, tmp_path / "repo", tmp_path / "server.log")
    load = Recorder()
    clients = [
        ("patient-0", PATIENT_MS, False),
        ("patient-1", PATIENT_MS, False),
        ("patient-fresh", PATIENT_MS, True),  # a new connection each time: it waits in the accept queue
        ("impatient-0", IMPATIENT_MS, False),
        ("impatient-1", IMPATIENT_MS, False),
        ("impatient-fresh", IMPATIENT_MS, True),
    ]
    for name, deadline_ms, fresh in clients:
        timeout_s = deadline_ms / 1000 + STALL_S + 2 * SLACK_S  # a hang shows as lateness, not a timeout
        load.spawn(
            name,
            http_client(load, server.url, name, deadline_ms=deadline_ms, fresh=fresh, timeout_s=timeout_s),
        )
    try:
        load.wait_for(lambda records: sum(r.result == 200 for r in records) >= 30, "serving before the stall")
        stopped_at = time.monotonic()
        os.kill(pid(server), signal.SIGSTOP)
        try:
            time.sleep(STALL_S)
        finally:
            os.kill(pid(server), signal.SIGCONT)
        resumed_at = time.monotonic()
        normal_from = resumed_at + SETTLE_S
        load.wait_for(
            lambda records: sum(r.sent_at >= normal_from for r in records) >= 60, "serving after the stall"
        )
    finally:
        load.close()
    records = load.snapshot()

    before = [r for r in records if r.done_at < stopped_at]
    caught = [r for r in records if r.sent_at < resumed_at and r.done_at > stopped_at]
    after = [r for r in records if r.sent_at >= normal_from]
    expired = [r for r in caught if r.sent_at + r.deadline_s < resumed_at]
    first_ok = min((r.done_at for r in records if r.sent_at >= resumed_at and r.result == 200), default=None)
    report(
        f"SIGSTOP {STALL_S:.1f} s: {len(records)} requests; before {dict(counts(before))} "
        f"(p50 {statistics.median(r.seconds for r in before) * 1000:.0f} ms); caught by the stall "
        f"{dict(counts(caught))} (of which deadline passed in it: {dict(counts(expired))}, slowest "
        f"{max(r.seconds for r in caught):.2f} s); sent {SETTLE_S:.0f} s after the resume "
        f"{dict(counts(after))} "
        f"(p50 {statistics.median(r.seconds for r in after) * 1000:.0f} ms, max "
        f"{max(r.seconds for r in after) * 1000:.0f} ms); first 200 sent after the resume "
        f"{(first_ok or resumed_at) - resumed_at:.2f} s after it"
    )

    # No request lost: every one got an HTTP answer, and only these.
    assert all(isinstance(r.result, int) for r in records), counts(records)
    assert all(r.result in (200, 503, 504) for r in records), counts(records)
    assert all(r.error == "deadline_exceeded" for r in records if r.result == 504), counts(records)
    assert len(caught) >= len(clients) // 2, f"the stall caught too few requests: {counts(caught)}"
    # A 504 only for a request whose deadline had really passed; none hung past its bound.
    for r in records:
        if r.result == 504:
            assert r.seconds >= r.deadline_s * 0.95, r
        assert r.done_at <= max(r.sent_at + r.deadline_s, resumed_at) + SLACK_S, r
    # Deadlines honoured afterwards: requests are answered 200 in their normal time again.
    assert after and all(r.result == 200 and r.seconds <= NORMAL_S for r in after), counts(after)

    # The queue empties, the server is ready, and nothing was a 500.
    poll(
        lambda: (
            metric_value(scrape(server), "inference_engine_queue_depth", model=MODEL) == 0
            and metric_value(scrape(server), "inference_engine_in_flight_requests", model=MODEL) == 0
        ),
        "queue and in-flight requests empty",
    )
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.get("/ready").status_code == 200
    metrics = scrape(server)
    assert metric_value(metrics, "inference_engine_requests_total", status="500") == 0
    assert metric_value(metrics, "inference_engine_errors_total", type="internal_error") == 0
    assert metric_value(metrics, "inference_engine_errors_total", type="model_failed") == 0
    assert server.process is not None and server.process.poll() is None  # the same process serves on


# -- SIGKILL and a restart -------------------------------------------------------------------------

LOAD_DELAY_S = 1.0  # the new process answers 503 model_not_ready while its model loads
SYNC_CLIENTS, ASYNC_TASKS = 2, 2
AFTER_RESTART = 20  # calls that must succeed on the new process before the load stops


CALL_TIMEOUT_S = 30.0  # a call's whole budget, retries and waits included: what bounds a restart


def restart_tolerant_policy() -> RetryPolicy:
    """Retries for a client that must ride out a restart of its one server (a few seconds).

    The defaults (3 attempts, 0.1 s base) give up after about 0.3 s of refused connections.
    Here the call's timeout is the budget: attempts enough to fill it (full-jitter backoff
    capped at 0.5 s, so about 4 a second), and a server back within it is found at once.
    """
    return RetryPolicy(max_attempts=200, base_delay_s=0.1, max_delay_s=0.5)


def restart_tolerant_breaker() -> CircuitBreaker | bool:
    """No breaker: it fails calls fast by design, and with the default 5 failures a restart opens it.

    A client with one server to wait for has nothing to fail over to (docs/client.md).
    """
    return False


def sync_calls(recorder: Recorder, client: InferenceClient, name: str) -> Callable[[], None]:
    def run() -> None:
        for _ in range(MAX_REQUESTS):
            if recorder.stop.is_set():
                return
            sent_at = time.monotonic()
            try:
                client.predict(GREEN, model=MODEL)
            except InferenceError as exc:
                recorder.add(Record(name, sent_at, time.monotonic(), type(exc).__name__, str(exc)[:300]))
            else:
                recorder.add(Record(name, sent_at, time.monotonic(), 200))
            recorder.stop.wait(PAUSE_S)

    return run


def async_calls(recorder: Recorder, url: str, waits: list[float]) -> Callable[[], None]:
    """One thread with its own event loop: ``ASYNC_TASKS`` concurrent callers on one async client."""

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    async def caller(client: AsyncInferenceClient, name: str) -> None:
        for _ in range(MAX_REQUESTS):
            if recorder.stop.is_set():
                return
            sent_at = time.monotonic()
            try:
                await client.predict(GREEN, model=MODEL)
            except InferenceError as exc:
                recorder.add(Record(name, sent_at, time.monotonic(), type(exc).__name__, str(exc)[:300]))
            else:
                recorder.add(Record(name, sent_at, time.monotonic(), 200))
            await asyncio.sleep(PAUSE_S)

    async def main() -> None:
        async with AsyncInferenceClient(
            url,
            timeout=CALL_TIMEOUT_S,
            retry=restart_tolerant_policy(),
            breaker=restart_tolerant_breaker(),
            sleep=sleep,
        ) as client:
            await asyncio.gather(*(caller(client, f"async-{i}") for i in range(ASYNC_TASKS)))

    return lambda: asyncio.run(main())


def test_sigkill_and_restart_on_the_same_port_fails_no_client_call(
    servers: list[ServerProcess], tmp_path: Path, report: Callable[[str], None]
) -> None:
    add_colour_model(
        tmp_path / "repo", MODEL, delay_s=0.02, load_delay_s=LOAD_DELAY_S, settings={"max_batch_size": 4}
    )
    first = start(servers, tmp_path / "repo", tmp_path / "first.log")
    load = Recorder()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    client = InferenceClient(
        first.url,
        timeout=CALL_TIMEOUT_S,
        retry=restart_tolerant_policy(),
        breaker=restart_tolerant_breaker(),
        sleep=sleep,
    )
    try:
        for i in range(SYNC_CLIENTS):
            load.spawn(f"sync-{i}", sync_calls(load, client, f"sync-{i}"))
        load.spawn("async", async_calls(load, first.url, waits))
        load.wait_for(lambda records: sum(r.result == 200 for r in records) >= 20, "serving before the kill")
        assert first.process is not None
        killed_at = time.monotonic()
        first.process.kill()
        first.process.wait(10)
        second = start(servers, tmp_path / "repo", tmp_path / "second.log", port=first.port, wait_ready=False)
        listening_at = time.monotonic()
        second.wait_loaded(60)
        loaded_at = time.monotonic()
        everyone = {*(f"sync-{i}" for i in range(SYNC_CLIENTS)), *(f"async-{i}" for i in range(ASYNC_TASKS))}

        def served_after_restart(records: list[Record]) -> bool:
            """Enough answers from the new process, and one for every client (a client may still be
            in a backoff wait of its retries when the others are already served again)."""
            after = [r for r in records if r.result == 200 and r.sent_at > loaded_at]
            return len(after) >= AFTER_RESTART and {r.client for r in after} == everyone

        load.wait_for(served_after_restart, "serving every client after the restart")
    finally:
        load.close()
        client.close()
    records = load.snapshot()

    across = [r for r in records if r.sent_at < loaded_at and r.done_at > killed_at]
    first_after = min(  # the first answer from the new process
        (r.done_at for r in records if r.done_at > listening_at and r.result == 200), default=killed_at
    )
    report(
        f"SIGKILL + restart: {len(records)} calls {dict(counts(records))}; {len(across)} across the "
        f"restart, {sum(r.sent_at < killed_at for r in across)} of them in flight at the kill (slowest "
        f"{max((r.seconds for r in across), default=0):.2f} s); {len(waits)} retry waits "
        f"({sum(waits):.2f} s in all); new process listening {listening_at - killed_at:.2f} s after the "
        f"kill, model loaded {loaded_at - killed_at:.2f} s after; first success "
        f"{first_after - killed_at:.2f} s after the kill"
    )
    assert counts(records) == {"200": len(records)}, [r for r in records if r.result != 200][:5]
    assert across, "no call crossed the restart"
    assert waits, "the clients never had to retry: the restart was not seen"
    assert {r.client for r in records if r.sent_at > loaded_at} == {
        *(f"sync-{i}" for i in range(SYNC_CLIENTS)),
        *(f"async-{i}" for i in range(ASYNC_TASKS)),
    }


# -- a second SIGTERM or SIGINT during the drain --------------------------------------------------

SHUTDOWN_DELAY_S = 2.0  # the drain keeps the listener open this long: the second signal lands in it
SECOND_AFTER_S = 0.3
DRAIN_CLIENTS = 8
EXIT_BOUND_S = 3.0  # from the second signal to the process' exit, on a busy machine


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_second_signal_during_the_drain_exits_at_once(
    servers: list[ServerProcess], tmp_path: Path, report: Callable[[str], None], sig: signal.Signals
) -> None:
    # A slow pass in small batches: the queue holds requests from every client when the signals come.
    add_colour_model(tmp_path / "repo", MODEL, delay_s=0.25, settings={"max_batch_size": 2})
    server = start(
        servers, tmp_path / "repo", tmp_path / "server.log", IE_SERVER__SHUTDOWN_DELAY_S=str(SHUTDOWN_DELAY_S)
    )
    assert server.process is not None
    load = Recorder()
    names = [f"c{i}" for i in range(DRAIN_CLIENTS)]
    for name in names:  # each stops at its first transport error: the process is gone
        load.spawn(name, http_client(load, server.url, name, stop_on_transport_error=True))
    try:
        load.wait_for(lambda records: sum(r.result == 200 for r in records) >= DRAIN_CLIENTS, "serving")
        first_at = time.monotonic()
        server.process.send_signal(sig)
        time.sleep(SECOND_AFTER_S)
        second_at = time.monotonic()
        server.process.send_signal(sig)
        status = server.process.wait(EXIT_BOUND_S + 10)
        exited_at = time.monotonic()
        load.wait_for(
            lambda records: {r.client for r in records if isinstance(r.result, str)} >= set(names),
            "every client saw the process gone",
            timeout=10,
        )
    finally:
        load.close()
    records = load.snapshot()

    answered = [r for r in records if isinstance(r.result, int)]
    in_flight = [r for r in records if r.sent_at < second_at and r.done_at > second_at]
    report(
        f"second {sig.name} {SECOND_AFTER_S:.1f} s into the drain: exit status {status} "
        f"{exited_at - second_at:.2f} s after it; answered before the first signal "
        f"{dict(counts([r for r in answered if r.done_at < first_at]))}, during the drain "
        f"{dict(counts([r for r in answered if r.done_at >= first_at]))}; in flight at the second "
        f"signal {dict(counts(in_flight))}; sent between it and the exit "
        f"{dict(counts([r for r in records if second_at <= r.sent_at < exited_at]))}; sent after the exit "
        f"{dict(counts([r for r in records if r.sent_at >= exited_at]))}"
    )
    assert status == EXIT_FORCED == 143
    assert exited_at - second_at <= EXIT_BOUND_S
    assert f"second {sig.name}: exiting now without draining" in server.log()
    for r in records:
        if isinstance(r.result, int):  # answered: before the drain, or refused by it
            assert (r.result, r.error) in {(200, ""), (503, "shutting_down")}, r
        elif r.result in LOST:  # only a request in flight when the process went
            assert r.sent_at < exited_at and r.done_at > second_at, r
        else:  # nothing listens any more: refused before anything was sent
            assert r.result == "ConnectError" and r.sent_at > second_at, r
    assert any(r.result in LOST for r in in_flight), f"nothing was in flight: {counts(in_flight)}"


# -- reporting -------------------------------------------------------------------------------------


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a test's measurements in the terminal summary (``-rA``) and its captured output."""

    def write(line: str) -> None:
        print(line)
        request.node.user_properties.append(("measured", line))

    return write
