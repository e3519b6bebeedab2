"""``server.workers: 2``: two server processes on one port under a supervisor.

A real ``inference-engine serve --workers 2`` (tiny CNN, HTTP and gRPC): both workers answer on
the one port, a scrape from either reports every worker's requests, a killed worker is replaced
without a failed request from a client that retries nothing, model control is refused, SIGTERM
drains both and the supervisor exits 0, a port held by another program fails at once with 2,
and a supervisor that dies takes its workers with it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from skimage import data

from tests.helpers import CONFIG_DIR, ServerProcess, encode, metric_value
from tests.repository import add_tiny_cnn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PATH = "/v1/models/tiny_cnn/predict"
CAT = encode(data.chelsea(), "JPEG")
HEADERS = {"content-type": "image/jpeg"}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("workers-repository")
    add_tiny_cnn(repo)
    return repo


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        repository, args=["--workers", "2"], env={"IE_SERVER__MODEL_CONTROL": "true"}, grpc=True
    )
    process.start(tmp_path_factory.mktemp("workers-logs") / "server.log")
    yield process
    process.stop()


def log_lines(server: ServerProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def started_workers(server: ServerProcess) -> dict[int, int]:
    """Each worker's newest pid, from the supervisor's "worker started" lines."""
    return {
        int(str(line["worker"])): int(str(line["pid"]))
        for line in log_lines(server)
        if line.get("message") == "worker started"
    }


def predict_fresh(server: ServerProcess) -> int | str:
    """One prediction on a new connection (so the kernel picks a worker for each)."""
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            return client.post(PATH, content=CAT, headers=HEADERS).status_code
    except httpx.TransportError as exc:
        return type(exc).__name__


def answering_workers(server: ServerProcess, since: int) -> Counter[int]:
    """Which worker wrote the access lines of /predict after the first ``since`` log lines."""
    return Counter(
        int(str(line["worker"]))
        for line in log_lines(server)[since:]
        if line.get("path") == PATH and line.get("message") == "request"
    )


def test_both_workers_answer_on_one_port_and_every_scrape_counts_all_requests(server: ServerProcess) -> None:
    assert set(started_workers(server)) == {0, 1}
    before = len(log_lines(server))
    with httpx.Client(base_url=server.url, timeout=10) as client:
        scraped = metric_value(
            client.get("/metrics").text, "inference_engine_requests_total", model="tiny_cnn"
        )
    statuses = Counter(predict_fresh(server) for _ in range(60))
    assert statuses == {200: 60}
    workers = answering_workers(server, before)
    assert set(workers) == {0, 1}, workers  # the kernel spread 60 connections over both
    for _ in range(6):  # each scrape lands on either worker: all of them report every request
        with httpx.Client(base_url=server.url, timeout=10) as client:
            text = client.get("/metrics").text
        assert metric_value(text, "inference_engine_requests_total", model="tiny_cnn") == scraped + 60
        assert metric_value(text, "inference_engine_model_ready", model="tiny_cnn") == 1.0
        assert "process_resident_memory_bytes" not in text  # one worker's figure would mislead


def test_grpc_listens_on_one_port_for_both_workers(server: ServerProcess) -> None:
    for _ in range(4):
        with grpc.insecure_channel(server.grpc_target) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_model_control_is_refused_with_several_workers(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        response = client.post("/v2/repository/models/tiny_cnn/load", json={})
    assert response.status_code == 403
    assert "server.workers 2" in response.text
    warned = [
        line
        for line in log_lines(server)
        if str(line.get("message", "")).startswith("model control is refused")
    ]
    assert len(warned) == 1 and "worker" not in warned[0]  # said once, by the supervisor


def test_a_killed_worker_is_replaced_while_the_other_serves(server: ServerProcess) -> None:
    victim = started_workers(server)[0]
    os.kill(victim, signal.SIGKILL)
    statuses: Counter[int | str] = Counter()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses[predict_fresh(server)] += 1
        replacement = started_workers(server).get(0)
        if replacement != victim and any(
            line.get("message") == "model ready" and line.get("worker") == 0
            for line in log_lines(server)[-50:]
        ):
            break
        time.sleep(0.05)
    assert started_workers(server)[0] != victim, "no replacement started"
    # A request the dead worker held when it died is lost with it; a sequential client has one.
    assert statuses[200] >= sum(statuses.values()) - 1, statuses
    died = [
        line for line in log_lines(server) if line.get("message") == "worker died; starting a replacement"
    ]
    assert died and died[-1]["pid"] == victim and died[-1]["status"] == -signal.SIGKILL
    before = len(log_lines(server))
    assert Counter(predict_fresh(server) for _ in range(40)) == {200: 40}
    assert set(answering_workers(server, before)) == {0, 1}  # the replacement takes connections


def test_sigterm_drains_both_workers_and_the_supervisor_exits_0(server: ServerProcess) -> None:
    assert server.stop() == 0
    lines = log_lines(server)
    stopped = [line.get("worker") for line in lines if line.get("message") == "stopped"]
    assert sorted(stopped, key=str) == [0, 1, None]  # both workers, then the supervisor
    exited = [line for line in lines if line.get("message") == "worker exited"]
    assert [line["status"] for line in exited] == [0, 0]


def serve_command(repository: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "inference_engine", "serve", "--config-dir", str(CONFIG_DIR), "--env", "test",
        "--model-repository", str(repository), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "2", "--no-grpc",
    ]  # fmt: skip


def test_a_port_held_by_another_program_fails_at_once(repository: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(serve_command(repository, port), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"server.port: cannot listen on 127.0.0.1:{port}" in done.stderr


def test_workers_exit_when_the_supervisor_is_killed(repository: Path, tmp_path: Path) -> None:
    server = ServerProcess(repository, args=["--workers", "2"])
    server.start(tmp_path / "server.log")
    workers = list(started_workers(server).values())
    assert server.process is not None
    server.process.kill()
    server.process.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "a worker outlived its supervisor"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=2)
    server.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped (its parent, the supervisor, is gone: init reaps it).
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
