"""Fault injection: a model that misbehaves under load is contained, visible, and recovered from.

One real server process serves ``faulty`` (tests/fixtures/models/faulty: its behaviour is read
from a mode file before every forward pass) and ``healthy`` (a plain colour model). A few client
threads keep both busy for the whole module. Each test switches one fault on while the load
runs, holds it until it has shown itself, switches it off, and then checks:

* contained: every answer of ``faulty`` is 200 or the fault's documented error, the requests
  that ran under the fault got exactly that error (only the red ones for ``raise_on_red``; only
  the client with a short ``X-Request-Timeout-Ms`` for ``slow``), and ``healthy`` answered
  every request with 200 throughout;
* visible: the fault's metric moved and its log line is there, naming the model;
* recovered: after switching back to ``ok``, every request succeeds again within a bound, in
  the same process.

Every wait is bounded; the module takes about 30 s on an idle 2-core machine, 45 s on a busy one.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import ServerProcess, encode, metric_value
from tests.repository import add_colour_model, add_faulty_model

pytestmark = pytest.mark.integration

FAULTY, HEALTHY = "faulty", "healthy"
PASS_S = 0.08  # the faulty model's normal forward pass
SLOW_FACTOR = 10  # slow: 0.8 s a pass, past the impatient client's deadline
IMPATIENT_TIMEOUT_MS = 600  # an ok request takes about 0.1 s; a slow one at least 0.8 s
MAX_FORWARD_S = 2.0  # the watchdog's bound: past the slow pass, well before the hang ends
HANG_S = 8.0
LEAK_MB = 5
MB = 1024 * 1024

STEADY_CLIENTS = 3  # default deadline (configs/test.yaml: 20 s)
CLIENT_PAUSE_S = 0.03  # between a client's requests: keeps batches of 2-4 on a 2-core machine
RECOVERED_AFTER = 12  # successes in a row (across clients) that show a recovery
HOLD_TIMEOUT_S = 15.0

COLOURS = {
    "red": encode(np.full((32, 32, 3), (250, 10, 10), np.uint8), "PNG"),
    "green": encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG"),
    "blue": encode(np.full((32, 32, 3), (10, 10, 250), np.uint8), "PNG"),
}
GREEN_B64 = base64.b64encode(COLOURS["green"]).decode()


# -- the server and its load -------------------------------------------------------------------


@dataclass
class Faulty:
    """The server process, the switch of its faulty model, and what can be read from outside."""

    server: ServerProcess
    mode_file: Path
    pid: int

    def switch(self, mode: str) -> float:
        """Write the mode atomically (the model never reads half a file); the time it took effect."""
        staging = self.mode_file.with_suffix(".next")
        staging.write_text(mode)
        os.replace(staging, self.mode_file)
        return time.monotonic()

    def metrics(self) -> str:
        with httpx.Client(base_url=self.server.url, timeout=10) as client:
            return client.get("/metrics").text

    def log_records(self, offset: int) -> list[dict[str, object]]:
        """The server's JSON log lines written since byte ``offset``."""
        assert self.server.log_path is not None
        with self.server.log_path.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def log_size(self) -> int:
        assert self.server.log_path is not None
        return self.server.log_path.stat().st_size

    def rss_bytes(self) -> int:
        """Resident memory of the server process, from the kernel (not from the server)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")


@dataclass(frozen=True)
class Record:
    """One answered request."""

    client: str  # "steady", "impatient" (own short deadline) or "healthy" (the other model)
    colour: str
    sent_at: float
    done_at: float
    status: int  # -1: a transport error (never acceptable)
    error: str  # the error ``type``, "" on success
    message: str
    request_id: str


@dataclass
class Load:
    """Client threads sending to both models until stopped; every answer is recorded."""

    url: str
    records: list[Record] = field(default_factory=list)
    in_flight: dict[str, float] = field(default_factory=dict)  # client name -> sent_at
    changed: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        clients = [(f"steady-{i}", "steady", FAULTY) for i in range(STEADY_CLIENTS)]
        clients += [("impatient", "impatient", FAULTY), ("healthy", "healthy", HEALTHY)]
        for offset, (name, kind, model) in enumerate(clients):
            thread = threading.Thread(target=self._client, args=(name, kind, model, offset), name=name)
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _client(self, name: str, kind: str, model: str, offset: int) -> None:
        headers = {"X-Request-Timeout-Ms": str(IMPATIENT_TIMEOUT_MS)} if kind == "impatient" else {}
        colours = list(COLOURS)
        with httpx.Client(base_url=self.url, timeout=30, headers=headers) as client:
            n = 0
            while not self.stop.is_set():
                colour = colours[(n + offset) % len(colours)]
                request_id = f"{name}-{n}"
                sent_at = time.monotonic()
                with self.changed:
                    self.in_flight[name] = sent_at
                try:
                    response = client.post(
                        f"/v1/models/{model}/predict",
                        content=COLOURS[colour],
                        headers={"X-Request-ID": request_id, "Content-Type": "image/png"},
                    )
                    status = response.status_code
                    error = response.json().get("error", {}) if status != 200 else {}
                except httpx.TransportError as exc:
                    status, error = -1, {"type": type(exc).__name__, "message": str(exc)}
                record = Record(
                    kind, colour, sent_at, time.monotonic(), status,
                    str(error.get("type", "")), str(error.get("message", ""))[:200], request_id,
                )  # fmt: skip
                with self.changed:
                    del self.in_flight[name]
                    self.records.append(record)
                    self.changed.notify_all()
                n += 1
                self.stop.wait(CLIENT_PAUSE_S)  # a pace, and a prompt exit when stopped

    def wait_until(self, condition: Callable[[list[Record]], bool], timeout: float, what: str) -> None:
        """Block until ``condition(records)`` holds (re-checked on every answer), at most ``timeout``."""
        with self.changed:
            if not self.changed.wait_for(lambda: condition(self.records), timeout):
                raise AssertionError(f"{what}: not within {timeout} s; last answers: {self.records[-8:]}")

    def settled(self, timeout: float = 10.0) -> list[Record]:
        """Every record, once each request in flight now has been answered (none is cut in two)."""
        with self.changed:
            pending = dict(self.in_flight)
            answered = self.changed.wait_for(
                lambda: all(self.in_flight.get(c) != sent for c, sent in pending.items()), timeout
            )
            assert answered, f"requests still unanswered after {timeout} s: {pending}"
            return list(self.records)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    repo = tmp_path_factory.mktemp("faults-repo")
    mode_file = tmp_path_factory.mktemp("faults-switch") / "mode"
    mode_file.write_text("ok")
    add_faulty_model(
        repo, FAULTY, mode_file,
        delay_s=PASS_S, slow_factor=SLOW_FACTOR, hang_s=HANG_S, leak_mb=LEAK_MB, load_delay_s=1.0,
        settings={"max_batch_size": 4},
    )  # fmt: skip
    add_colour_model(repo, HEALTHY)
    env = {"IE_WATCHDOG__MAX_FORWARD_S": str(MAX_FORWARD_S), "IE_WATCHDOG__CHECK_INTERVAL_S": "0.2"}
    server = ServerProcess(repo, env=env)
    server.start(tmp_path_factory.mktemp("faults-logs") / "server.log")
    assert server.process is not None
    try:
        yield Faulty(server, mode_file, server.process.pid)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def load(faulty: Faulty) -> Iterator[Load]:
    running = Load(faulty.server.url)
    running.start()
    try:
        yield running
    finally:
        running.close()


# -- one fault, on and off ---------------------------------------------------------------------


@dataclass
class Phase:
    """What happened while one fault was on, and until the model had recovered from it."""

    mode: str
    on_at: float
    off_at: float
    recovered_at: float
    faulty: list[Record]  # answered after the fault was switched on
    healthy: list[Record]
    metrics_before: str
    metrics_after: str
    log: list[dict[str, object]]

    def ran_under_fault(self) -> list[Record]:
        """Requests sent and answered while the fault was on: any batch they were in read that mode.

        (One sent while it was on may still be queued when it is switched off, and run in ok mode.)
        """
        return [r for r in self.faulty if self.on_at < r.sent_at and r.done_at < self.off_at]

    def delta(self, name: str, **labels: str) -> float:
        return metric_value(self.metrics_after, name, **labels) - metric_value(
            self.metrics_before, name, **labels
        )

    def logged(self, message: str, **fields: object) -> list[dict[str, object]]:
        return [r for r in self.log if r.get("message") == message and fields.items() <= r.items()]

    def summary(self) -> str:
        under = self.ran_under_fault()
        statuses = sorted({(r.status, r.error) for r in under})
        return (
            f"{self.mode}: on {self.off_at - self.on_at:.2f} s, {len(under)} requests under it "
            f"{statuses}, recovered {self.recovered_at - self.off_at:.2f} s after switching back"
        )


def recovered_since(records: list[Record], off_at: float) -> float | None:
    """When the requests to ``faulty`` started succeeding for good after ``off_at``, if they have.

    That is the sending time of the first success after the last failure sent since the switch,
    once ``RECOVERED_AFTER`` successes (from any of the clients) follow it.
    """
    after = [r for r in records if r.client != "healthy" and r.sent_at >= off_at]
    last_failure = max((r.sent_at for r in after if r.status != 200), default=off_at)
    succeeded = sorted(r.sent_at for r in after if r.sent_at > last_failure)
    return succeeded[0] if len(succeeded) >= RECOVERED_AFTER else None


def run_fault(
    faulty: Faulty, load: Load, mode: str, hold: Callable[[float], None], recovery_timeout: float
) -> Phase:
    """Switch ``mode`` on under the running load, ``hold(on_at)`` it, switch it off, await recovery.

    Recovery (every request succeeding again) must come within ``recovery_timeout`` of the switch
    back, or the test fails here.
    """
    ready_from = time.monotonic()
    load.wait_until(
        lambda records: recovered_since(records, ready_from) is not None, HOLD_TIMEOUT_S, "serving before"
    )
    metrics_before, log_offset = faulty.metrics(), faulty.log_size()
    on_at = faulty.switch(mode)
    hold(on_at)
    off_at = faulty.switch("ok")
    load.wait_until(
        lambda records: recovered_since(records, off_at) is not None, recovery_timeout, f"{mode}: recovery"
    )
    records = load.settled()
    recovered_at = recovered_since(records, off_at)
    assert recovered_at is not None
    return Phase(
        mode=mode,
        on_at=on_at,
        off_at=off_at,
        recovered_at=recovered_at,
        faulty=[r for r in records if r.client != "healthy" and r.done_at >= on_at],
        healthy=[r for r in records if r.client == "healthy" and r.done_at >= on_at],
        metrics_before=metrics_before,
        metrics_after=faulty.metrics(),
        log=faulty.log_records(log_offset),
    )


def hold_until_answered(load: Load, enough: Callable[[list[Record]], bool]) -> Callable[[float], None]:
    """Keep the fault on until the requests sent under it include ``enough`` answers."""

    def hold(on_at: float) -> None:
        def under(records: list[Record]) -> bool:
            return enough([r for r in records if r.client != "healthy" and r.sent_at > on_at])

        load.wait_until(under, HOLD_TIMEOUT_S, "answers under the fault")

    return hold


def poll(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Re-check something outside the load (a metric) until it holds, at most ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(interval)


def assert_contained(phase: Phase, faulty: Faulty, allowed: set[tuple[str, int, str]]) -> None:
    """Only the documented answers, ``healthy`` untouched, all well after recovery, same process.

    ``allowed`` holds ``(client kind, status, error type)`` besides 200 (client ``*``: any).
    """
    for record in phase.faulty:
        if record.status == 200:
            continue
        assert record.sent_at < phase.recovered_at, f"{phase.mode}: failed after recovery: {record}"
        assert {("*", record.status, record.error), (record.client, record.status, record.error)} & allowed, (
            f"{phase.mode}: undocumented answer {record}"
        )
    assert phase.healthy, "the healthy model got no requests"
    assert all(r.status == 200 for r in phase.healthy), [r for r in phase.healthy if r.status != 200]
    assert faulty.server.process is not None
    assert faulty.server.process.poll() is None, "the server process ended"
    assert faulty.server.process.pid == faulty.pid
    print(phase.summary())


# -- the faults --------------------------------------------------------------------------------


def failures_under(enough: int) -> Callable[[list[Record]], bool]:
    return lambda under: sum(r.status != 200 for r in under) >= enough


@pytest.mark.parametrize(
    ("mode", "message", "log_message"),
    [
        ("raise", "failed on this batch (RuntimeError)", "batch failed"),
        (
            "nan",
            "returned {output} that are not finite (NaN or infinity)",
            "model returned an invalid output",
        ),
        (
            "wrong_shape",
            "returned {output} of shape [5]; it declares [3]",
            "model returned an invalid output",
        ),
    ],
)
def test_a_fault_of_every_output_fails_those_requests_with_model_failed(
    faulty: Faulty, load: Load, mode: str, message: str, log_message: str
) -> None:
    other_routes: list[httpx.Response] = []

    def hold(on_at: float) -> None:
        hold_until_answered(load, failures_under(6))(on_at)
        # The same output through the other routes that turn outputs into answers (run_rows).
        v2 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [GREEN_B64] * 2}]}
        with httpx.Client(base_url=faulty.server.url, timeout=10) as client:
            other_routes.append(client.post(f"/v1/models/{FAULTY}/embed", content=COLOURS["green"]))
            other_routes.append(client.post(f"/v2/models/{FAULTY}/infer", json=v2))

    phase = run_fault(faulty, load, mode, hold, 5.0)
    assert_contained(phase, faulty, {("*", 500, "model_failed")})
    under = phase.ran_under_fault()
    assert under
    for record in under:
        assert (record.status, record.error) == (500, "model_failed"), record
        assert message.format(output="probabilities") in record.message, record
    embed, v2 = other_routes
    assert embed.status_code == 500, embed.text
    assert embed.json()["error"]["type"] == "model_failed"
    assert message.format(output="embeddings") in embed.json()["error"]["message"]
    assert v2.status_code == 500, v2.text
    assert message.format(output="probabilities") in v2.json()["error"]  # V2's error shape
    failed = len(under) + len(other_routes)
    assert phase.delta("inference_engine_errors_total", model=FAULTY, type="model_failed") >= failed
    logged = phase.logged(log_message, model=FAULTY)
    assert logged, f"no {log_message!r} line for {FAULTY}"
    failed_ids = {r.request_id for r in under}
    if mode == "raise":
        assert phase.delta("inference_engine_batch_failures_total", model=FAULTY) >= 1
        assert any(failed_ids & set(ids) for r in logged if isinstance(ids := r["request_ids"], list))
    else:  # the batch itself ran; the answer was refused, request by request
        assert phase.delta("inference_engine_batch_failures_total", model=FAULTY) == 0
        assert {r["request_id"] for r in logged} >= failed_ids
        assert all(r["level"] == "ERROR" for r in logged)


def test_an_input_the_model_fails_on_fails_alone(faulty: Faulty, load: Load) -> None:
    def enough(under: list[Record]) -> bool:
        red = [r for r in under if r.colour == "red"]
        return len(red) >= 3 and len(under) - len(red) >= 6

    phase = run_fault(faulty, load, "raise_on_red", hold_until_answered(load, enough), 5.0)
    assert_contained(phase, faulty, {("*", 500, "model_failed")})
    for record in phase.ran_under_fault():
        expected = (500, "model_failed") if record.colour == "red" else (200, "")
        assert (record.status, record.error) == expected, record
    assert phase.delta("inference_engine_errors_total", model=FAULTY, type="model_failed") >= 3
    assert phase.delta("inference_engine_batch_failures_total", model=FAULTY) == 0
    assert phase.logged("model failed on one input", model=FAULTY)


def test_a_slow_model_costs_only_the_requests_whose_own_deadline_passes(faulty: Faulty, load: Load) -> None:
    """Impatient clients end in 504 ``deadline_exceeded`` (their deadline passed in the queue or
    the pass) or, once predictive admission has measured the slow passes, in 503
    ``deadline_unmeetable`` at once; everyone else is answered."""

    def enough(under: list[Record]) -> bool:
        impatient = sum(r.client == "impatient" for r in under)
        return impatient >= 2 and len(under) - impatient >= 4

    late = {(504, "deadline_exceeded"), (503, "deadline_unmeetable")}
    phase = run_fault(faulty, load, "slow", hold_until_answered(load, enough), 10.0)
    assert_contained(phase, faulty, {("impatient", status, error) for status, error in late})
    for record in phase.ran_under_fault():
        if record.client == "impatient":
            assert (record.status, record.error) in late, record
        else:
            assert (record.status, record.error) == (200, ""), record
    errors = "inference_engine_errors_total"
    refused = phase.delta(errors, model=FAULTY, type="deadline_unmeetable")
    timed_out = phase.delta(errors, model=FAULTY, type="deadline_exceeded")
    assert refused + timed_out >= 2
    # Visible as slow passes in the forward-pass histogram: passes longer than 0.5 s.
    passes = "inference_engine_inference_duration_seconds"
    slow_passes = phase.delta(f"{passes}_count", model=FAULTY) - phase.delta(
        f"{passes}_bucket", model=FAULTY, le="0.5"
    )
    assert slow_passes >= 1
    if timed_out:
        assert phase.logged("request", model=FAULTY, status=504, error="deadline_exceeded")  # access lines
        assert any(
            r.get("level") == "WARNING"
            and r.get("error") == "deadline_exceeded"
            and FAULTY in str(r["message"])
            for r in phase.log
        )  # "request failed: no answer within the request deadline (faulty)"
    if refused:
        assert phase.logged("request", model=FAULTY, status=503, error="deadline_unmeetable")


def test_a_leaking_model_keeps_serving_and_stops_growing_once_switched_back(
    faulty: Faulty, load: Load
) -> None:
    batches = "inference_engine_batch_size_count"
    leaked_batches = 12
    measured: dict[str, float] = {}

    def batch_count() -> float:
        return metric_value(faulty.metrics(), batches, model=FAULTY)

    def hold(on_at: float) -> None:
        measured["rss_on"] = faulty.rss_bytes()
        start = batch_count()
        poll(lambda: batch_count() - start >= leaked_batches, HOLD_TIMEOUT_S, "batches while leaking")
        measured["leak_batches"] = batch_count() - start

    phase = run_fault(faulty, load, "leak", hold, 5.0)
    assert_contained(phase, faulty, set())
    assert all(r.status == 200 for r in phase.ran_under_fault())
    # The batch that was running at the switch may still leak once; from the next one on, none do.
    settled = batch_count()
    poll(lambda: batch_count() - settled >= 2, HOLD_TIMEOUT_S, "batches after the switch")
    rss_off, after_off = faulty.rss_bytes(), batch_count()
    poll(lambda: batch_count() - after_off >= leaked_batches, HOLD_TIMEOUT_S, "batches after the leak")
    rss_end = faulty.rss_bytes()
    grew, then = rss_off - measured["rss_on"], rss_end - rss_off
    print(
        f"leak: RSS +{grew / MB:.0f} MB over {measured['leak_batches']:.0f} leaking batches, "
        f"then {then / MB:+.1f} MB over {batch_count() - after_off:.0f} batches in ok"
    )
    assert grew >= 0.5 * LEAK_MB * MB * measured["leak_batches"]
    assert then < 2 * LEAK_MB * MB  # still leaking would be another 12 x 5 MB
    # The server's own metric shows it too (what an alert on memory would watch).
    assert phase.delta("process_resident_memory_bytes") >= 0.5 * grew


def test_a_hung_forward_pass_is_restarted_and_the_model_serves_again(faulty: Faulty, load: Load) -> None:
    restarts = "inference_engine_watchdog_restarts_total"
    before = metric_value(faulty.metrics(), restarts, model=FAULTY, reason="hung")

    def hold(on_at: float) -> None:
        # Off as soon as the watchdog has acted and its 503s are answered, so that the reload's
        # canary runs in ok mode (the reload takes load_delay_s = 1 s first).
        poll(
            lambda: metric_value(faulty.metrics(), restarts, model=FAULTY, reason="hung") > before,
            MAX_FORWARD_S + HOLD_TIMEOUT_S,
            "the watchdog's restart",
        )
        hold_until_answered(load, lambda under: any(r.status == 503 for r in under))(on_at)

    phase = run_fault(faulty, load, "hang", hold, 20.0)
    allowed = {("*", 503, "model_not_ready"), ("impatient", 504, "deadline_exceeded")}
    assert_contained(phase, faulty, allowed)
    under = phase.ran_under_fault()
    assert any(r.status == 503 for r in under)
    assert all(r.status != 200 for r in under)  # the model was hung, then out of service
    assert phase.delta(restarts, model=FAULTY, reason="hung") == 1
    assert phase.delta("inference_engine_errors_total", model=FAULTY, type="model_not_ready") >= 1
    assert phase.logged("model unhealthy; restarting it", model=FAULTY, level="ERROR")
    assert metric_value(phase.metrics_after, "inference_engine_model_ready", model=FAULTY) == 1
