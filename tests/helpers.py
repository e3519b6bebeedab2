"""Shared test helpers: real images from scikit-image and a real server process."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
FIXTURE_MODELS = Path(__file__).resolve().parent / "fixtures" / "models"


def encode(image: Image.Image | np.ndarray, fmt: str = "JPEG", **params: object) -> bytes:
    """Encode an image (array or PIL) to bytes in ``fmt``."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def cat_jpeg() -> bytes:
    return encode(data.chelsea(), "JPEG", quality=92)


def coffee_png() -> bytes:
    return encode(data.coffee(), "PNG")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """``inference-engine serve`` as a child process on a free loopback port."""

    repository: Path
    args: list[str] = field(default_factory=list)
    env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # for its own checks (an API key)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    grpc: bool = False  # also listen for gRPC (off in the test config), on ``grpc_port``
    grpc_port: int = 0
    python: str = sys.executable  # another venv's interpreter, to serve from that install

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        """``host:port`` of the gRPC listener, as ``tritonclient.grpc`` and ``grpc`` take it."""
        assert self.grpc, "started without grpc=True"
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, log_path: Path, wait_ready: bool = True, timeout: float = 120.0) -> ServerProcess:
        self.port = self.port or free_port()
        self.log_path = log_path
        environ = {**os.environ, "IE_LOGGING__FORMAT": "json", **self.env}
        command = [
            self.python, "-m", "inference_engine", "serve",
            "--config-dir", str(CONFIG_DIR), "--env", "test",
            "--model-repository", str(self.repository),
            "--host", "127.0.0.1", "--port", str(self.port), *self.args,
        ]  # fmt: skip
        if self.grpc:
            self.grpc_port = self.grpc_port or free_port()
            environ["IE_GRPC__ENABLED"] = "true"
            command += ["--grpc-port", str(self.grpc_port)]
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=environ)
        self.wait_until(lambda c: c.get("/health").status_code == 200, timeout)
        if wait_ready:
            self.wait_loaded(timeout)
        return self

    def wait_until(self, check: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5, headers=dict(self.headers)) as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if check(client):  # type: ignore[operator]
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"server not up in {timeout}s:\n{self.log()}")

    def wait_loaded(self, timeout: float = 120.0) -> None:
        """Wait until no version of any model is still pending or loading (a model's own
        ``state`` is that of the version that describes it)."""

        def loaded(client: httpx.Client) -> bool:
            models = client.get("/v1/models").json()["models"]
            states = [m["state"] for m in models] + [
                v["state"] for m in models for v in m.get("versions", [])
            ]
            return all(state not in ("pending", "loading") for state in states)

        self.wait_until(loaded, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop_log(self) -> str:
        """The log after the process has ended (stops it first if needed)."""
        self.stop()
        return self.log()

    def stop(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self._log.closed:
            self._log.close()
        return self.process.returncode


def metric_value(metrics_text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@contextlib.asynccontextmanager
async def in_process_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running and every model loaded, behind an in-process client."""
    async with app.router.lifespan_context(app):
        await app.state.service.wait_loaded()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@dataclass
class RedisServer:
    """Debian's ``redis-server`` on a free loopback port, no persistence (``.ci/run`` installs it).

    ``stop`` then ``start`` brings it back on the same port, empty: what a restarted Redis
    without persistence looks like to the servers using it.
    """

    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.port = self.port or free_port()
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
