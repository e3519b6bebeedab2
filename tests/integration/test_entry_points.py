"""The ways a user starts the server: the console script, `python service.py`, bad configuration."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import ROOT, ServerProcess, cat_jpeg, encode, free_port
from tests.repository import add_colour_model

pytestmark = pytest.mark.integration


def test_service_py_serves_one_model_folder(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_colour_model(repo, "first")
    add_colour_model(repo, "second")
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "service.py", "--model_directory", str(repo / "second"), "--env", "dev",
         "--port", str(port)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = ServerProcess(repo, port=port, process=process, log_path=tmp_path / "server.log")
    server._log = log
    try:
        server.wait_until(lambda c: c.get("/ready").status_code == 200, 60)
        with httpx.Client(base_url=server.url) as client:
            assert [m["name"] for m in client.get("/v1/models").json()["models"]] == ["second"]
            assert client.post("/predict", content=cat_jpeg()).status_code == 200
            assert client.get("/info").json()["env"] == "dev"
    finally:
        assert server.stop() == 0


def test_sigterm_exits_cleanly_and_unloads(tmp_path: Path) -> None:
    add_colour_model(tmp_path / "repo", "colour")
    server = ServerProcess(tmp_path / "repo").start(tmp_path / "server.log")
    assert server.stop() == 0
    log = server.log()
    assert "model ready" in log
    assert "Traceback" not in log


def test_an_invalid_setting_stops_start_up_with_exit_code_2(tmp_path: Path) -> None:
    env = {**os.environ, "IE_BATCHING__MAX_BATCH_SIZE": "lots"}
    result = subprocess.run(
        [sys.executable, "-m", "inference_engine", "serve", "--config-dir", str(ROOT / "configs")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "batching.max_batch_size" in result.stderr
    assert "'lots'" in result.stderr
    assert "IE_BATCHING__MAX_BATCH_SIZE" in result.stderr


def test_an_unknown_model_name_stops_start_up_with_exit_code_2(tmp_path: Path) -> None:
    add_colour_model(tmp_path, "colour")
    result = subprocess.run(
        [sys.executable, "-m", "inference_engine", "serve", "--config-dir", str(ROOT / "configs"),
         "--model-repository", str(tmp_path), "--model", "nope"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "nope not found" in result.stderr
    assert "colour" in result.stderr


def test_sigterm_under_load_answers_every_accepted_request(tmp_path: Path) -> None:
    add_colour_model(tmp_path / "repo", "slow", delay_s=0.3, settings={"max_batch_size": 2})
    server = ServerProcess(tmp_path / "repo").start(tmp_path / "server.log")
    payload = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")

    async def load_then_stop() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            requests = [asyncio.create_task(client.post("/predict", content=payload)) for _ in range(10)]
            await asyncio.sleep(0.5)  # all accepted and queued; about 1.5 s of work left
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*requests)

    responses = asyncio.run(load_then_stop())
    assert [r.status_code for r in responses] == [200] * 10
    assert server.process is not None
    assert server.process.wait(30) == 0
    server.stop()


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    add_colour_model(tmp_path / "repo", "slow", delay_s=1.0, settings={"max_batch_size": 1})
    server = ServerProcess(tmp_path / "repo", env={"IE_SERVER__DRAIN_TIMEOUT_S": "30"})
    server.start(tmp_path / "server.log")
    payload = encode(np.full((32, 32, 3), (10, 250, 10), np.uint8), "PNG")

    async def stop_twice() -> float:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            requests = [asyncio.create_task(client.post("/predict", content=payload)) for _ in range(8)]
            await asyncio.sleep(0.5)  # about 8 s of queued work
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(server.process.wait, 10)
            elapsed = time.monotonic() - started
            await asyncio.gather(*requests, return_exceptions=True)
            return elapsed

    elapsed = asyncio.run(stop_twice())
    assert server.process is not None
    assert server.process.returncode == 143
    assert elapsed < 2.0
    assert "second SIGTERM: exiting now" in server.stop_log()


def test_a_default_model_that_is_not_served_stops_start_up(tmp_path: Path) -> None:
    add_colour_model(tmp_path, "colour")
    env = {**os.environ, "IE_SERVER__DEFAULT_MODEL": "missing"}
    result = subprocess.run(
        [sys.executable, "-m", "inference_engine", "serve", "--config-dir", str(ROOT / "configs"),
         "--model-repository", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "default_model 'missing'" in result.stderr
