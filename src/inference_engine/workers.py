"""Several server processes on one port (``server.workers``), kept running by a supervisor.

One process serves a light model only as fast as its one GIL lets the event loop, the decode
threads and the model thread take turns (docs/PERFORMANCE.md: a quarter of two cores idle under
load). ``server.workers: N`` starts N full servers instead, each with its own models, queues,
decode pool and event loop, listening on the same port with ``SO_REUSEPORT`` so that the kernel
spreads new connections across them (gunicorn's and uvicorn's ``--workers``, with one socket
per worker rather than one shared, so that each worker's drain closes and empties its own
accept queue exactly as a single server's does).

The supervisor imports no model code and holds the ports: it binds them first with
``SO_REUSEPORT`` without listening (so port 0 resolves once, to the same port for everyone, and a
port another program holds fails at once), sets up the metrics folder every worker writes to,
forwards SIGTERM / SIGINT, replaces a worker that dies, and gives up (exit 1) when workers keep
dying, or with the worker's status when it refused its configuration (2).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import TYPE_CHECKING

from inference_engine.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    from inference_engine.settings import Settings

logger = logging.getLogger("inference_engine.workers")

#: A worker's exit status for settings or models it refused: the supervisor stops, as ``serve`` would.
EXIT_CONFIG = 2
#: Replacements allowed within ``RESTART_WINDOW_S`` before the supervisor gives up.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: Wait before replacing a dead worker (a crash loop should not spin).
RESTART_DELAY_S = 1.0
#: Beyond the drain budget, how long the workers may take to exit before they are killed.
EXIT_GRACE_S = 15.0
POLL_S = 0.2
#: Linux's prctl option: the signal a process gets when its parent exits.
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSlot:
    """What one worker process is told: which of the N it is, and where metrics go."""

    index: int
    metrics_dir: str


def port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, not listening.

    The supervisor's hold on the port, and each worker's listener: its event loop listens on it
    once the start-up is done, and the kernel spreads connections over the listening ones only;
    a connection while none listens is refused, never left queued on a socket nobody accepts on.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _hold(key: str, host: str, port: int, advice: str) -> socket.socket:
    """:func:`port_socket`, or a configuration error naming ``key`` when the port is taken."""
    try:
        return port_socket(host, port)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot listen on {host}:{port} ({exc.strerror}); {advice}") from exc


def run_worker(settings: Settings, slot: WorkerSlot) -> None:
    """A worker process's entry point (spawned: a fresh interpreter, so the metrics folder set
    in the environment by the supervisor is what prometheus_client sees on import)."""
    from inference_engine.server import serve

    _follow_the_supervisor()
    try:
        code = serve(settings, slot=slot)
    except (ConfigError, ModelLoadError) as exc:
        logging.getLogger("inference_engine.server").error(
            "worker refused its configuration", extra={"worker": slot.index, "error": str(exc)}
        )
        code = EXIT_CONFIG
    raise SystemExit(code)


def _follow_the_supervisor() -> None:
    """Take signals from the supervisor only, and die with it.

    A terminal's Ctrl-C (or ``kill`` of a process group) reaches every process of the group; a
    worker that got it from there and again from the supervisor would take the second as "exit
    now, without draining". In a group of its own it hears only the supervisor; and, no longer
    reached through the group, it asks the kernel for SIGTERM should the supervisor die first
    (``PR_SET_PDEATHSIG``), so that no orphan keeps serving the port.
    """
    supervisor = os.getppid()
    os.setpgrp()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the request above took hold
        os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    """Starts ``server.workers`` processes, replaces the ones that die, stops them on a signal."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, SpawnProcess] = {}
        self._restarts: list[float] = []
        self._stopping: float | None = None
        self._metrics_dir = ""

    def run(self) -> int:
        """Serve until a signal; the exit status ``serve`` would give."""
        server = self.settings.server
        with self._held_ports() as settings, tempfile.TemporaryDirectory(prefix="ie-metrics-") as folder:
            self.settings = settings
            self._metrics_dir = folder
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder  # read by each worker's prometheus_client
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._on_signal)
            logger.info(
                "starting workers",
                extra={"workers": server.workers, "host": server.host, "port": settings.server.port},
            )
            if server.model_control:
                logger.warning(
                    "model control is refused with server.workers above 1: a load or unload would change "
                    "one worker; edit the model folders with server.repository_poll_s set, or restart",
                    extra={"workers": server.workers},
                )
            for index in range(server.workers):
                self._start(index)
            code = self._watch()
            logger.info("stopped", extra={"status": code})
            return code

    @contextlib.contextmanager
    def _held_ports(self) -> Iterator[Settings]:
        """Bind the HTTP (and gRPC) port without listening; yields the settings with port 0
        replaced by the port it became, so every worker binds the same one."""
        server, grpc = self.settings.server, self.settings.grpc
        with contextlib.ExitStack() as held:
            http = held.enter_context(
                _hold("server.port", server.host, server.port, "free the port or choose another")
            )
            update: dict[str, object] = {"server": server.model_copy(update={"port": http.getsockname()[1]})}
            if grpc.enabled:
                advice = "free the port, choose another (--grpc-port) or turn gRPC off (--no-grpc)"
                rpc = held.enter_context(_hold("grpc.port", server.host, grpc.port, advice))
                update["grpc"] = grpc.model_copy(update={"port": rpc.getsockname()[1]})
            yield self.settings.model_copy(update=update)

    def _start(self, index: int) -> None:
        slot = WorkerSlot(index=index, metrics_dir=self._metrics_dir)
        process = self._context.Process(
            target=run_worker, args=(self.settings, slot), name=f"inference-engine-worker-{index}"
        )
        process.start()
        self._workers[index] = process
        logger.info("worker started", extra={"worker": index, "pid": process.pid})

    def _watch(self) -> int:
        """Replace dead workers until a signal; then wait for all of them to exit."""
        from prometheus_client import multiprocess

        code = 0
        while self._workers:
            time.sleep(POLL_S)
            if self._stopping is not None and time.monotonic() > self._stopping + self._exit_budget():
                self._kill_all()
            for index, process in list(self._workers.items()):
                if process.is_alive():
                    continue
                process.join()
                del self._workers[index]
                pid = process.pid
                assert pid is not None
                multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]
                status = process.exitcode
                if self._stopping is not None:
                    logger.info(
                        "worker exited", extra={"worker": index, "pid": process.pid, "status": status}
                    )
                    code = max(code, 1 if status not in (0, None) else 0)
                    continue
                code = self._replace(index, pid, status)
                if code:
                    return code
        return code

    def _replace(self, index: int, pid: int, status: int | None) -> int:
        """Start a dead worker's replacement; a status for the supervisor to exit with if not."""
        if status == EXIT_CONFIG:
            logger.error("a worker refused the configuration; stopping", extra={"worker": index, "pid": pid})
            self._stop_all()
            self._wait_all()
            return EXIT_CONFIG
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(self._restarts) > MAX_RESTARTS:
            logger.error(
                "workers keep dying; stopping",
                extra={"restarts": len(self._restarts), "window_s": RESTART_WINDOW_S, "status": status},
            )
            self._stop_all()
            self._wait_all()
            return 1
        logger.error(
            "worker died; starting a replacement",
            extra={"worker": index, "pid": pid, "status": status, "error": "worker_died"},
        )
        time.sleep(RESTART_DELAY_S)
        if self._stopping is None:
            self._start(index)
        return 0

    def _exit_budget(self) -> float:
        return self.settings.server.drain_timeout_s + EXIT_GRACE_S

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stopping is not None:  # a second signal: the workers exit at once on theirs too
            logger.warning("second %s: workers exit now without draining", name)
        else:
            logger.info("stopping on %s: the workers drain", name)
            self._stopping = time.monotonic()
        for process in self._workers.values():
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    def _stop_all(self) -> None:
        self._stopping = self._stopping or time.monotonic()
        for process in self._workers.values():
            if process.is_alive():
                process.terminate()

    def _wait_all(self) -> None:
        deadline = time.monotonic() + self._exit_budget()
        for process in self._workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
        self._kill_all()

    def _kill_all(self) -> None:
        for index, process in self._workers.items():
            if process.is_alive():
                logger.error("worker did not exit in time; killing it", extra={"worker": index})
                process.kill()


def supervise(settings: Settings) -> int:
    """``serve`` with ``server.workers`` above 1."""
    return Supervisor(settings).run()
