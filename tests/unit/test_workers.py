"""The supervisor of ``server.workers``: its hold on the ports, and when it replaces a dead
worker or gives up. The processes themselves are tests/integration/test_workers.py's."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from inference_engine.control import check_control_request
from inference_engine.errors import ConfigError, Forbidden
from inference_engine.settings import ServerSettings, Settings
from inference_engine.workers import EXIT_CONFIG, MAX_RESTARTS, Supervisor, port_socket


def settings(tmp_path: Path, **server: object) -> Settings:
    return Settings.model_validate(
        {
            "model_repository": str(tmp_path),
            "server": {"workers": 2, "port": 0, **server},
            "grpc": {"port": 0},
        }
    )


def test_port_sockets_share_a_port_and_refuse_one_held_without_reuseport() -> None:
    with port_socket("127.0.0.1", 0) as first:
        port = first.getsockname()[1]
        with port_socket("127.0.0.1", port) as second:
            assert second.getsockname()[1] == port
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        with pytest.raises(OSError, match="Address already in use"):
            port_socket("127.0.0.1", plain.getsockname()[1])


def test_the_supervisor_resolves_port_0_once_for_every_worker(tmp_path: Path) -> None:
    supervisor = Supervisor(settings(tmp_path))
    with supervisor._held_ports() as held:
        assert held.server.port != 0 and held.grpc.port != 0
        assert held.server.port != held.grpc.port
        with port_socket("127.0.0.1", held.server.port):  # a worker binds beside the hold
            pass
    assert held.server.workers == 2


@pytest.mark.parametrize(("key", "grpc_enabled"), [("server.port", True), ("grpc.port", True)])
def test_a_port_held_by_another_program_is_a_config_error(
    tmp_path: Path, key: str, grpc_enabled: bool
) -> None:
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        taken = plain.getsockname()[1]
        config = settings(tmp_path, port=taken if key == "server.port" else 0)
        if key == "grpc.port":
            config = config.model_copy(update={"grpc": config.grpc.model_copy(update={"port": taken})})
        expected = re.escape(f"{key}: cannot listen on 127.0.0.1:{taken}")
        with pytest.raises(ConfigError, match=expected), Supervisor(config)._held_ports():
            pass


class Recorder(Supervisor):
    """A supervisor that starts and stops nothing, and never sleeps."""

    def __init__(self, config: Settings) -> None:
        super().__init__(config)
        self.started: list[int] = []
        self.stopped = 0

    def _start(self, index: int) -> None:
        self.started.append(index)

    def _stop_all(self) -> None:
        self.stopped += 1

    def _wait_all(self) -> None:
        pass


def test_a_dead_worker_is_replaced_until_they_keep_dying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inference_engine.workers.time.sleep", lambda _: None)
    supervisor = Recorder(settings(tmp_path))
    for attempt in range(MAX_RESTARTS):
        assert supervisor._replace(attempt % 2, 1000 + attempt, -9) == 0
    assert supervisor.started == [i % 2 for i in range(MAX_RESTARTS)] and supervisor.stopped == 0
    assert supervisor._replace(0, 2000, -9) == 1  # one more within the minute: give up
    assert supervisor.stopped == 1 and len(supervisor.started) == MAX_RESTARTS


def test_a_worker_refusing_its_configuration_stops_the_supervisor(tmp_path: Path) -> None:
    supervisor = Recorder(settings(tmp_path))
    assert supervisor._replace(1, 1234, EXIT_CONFIG) == EXIT_CONFIG
    assert supervisor.started == [] and supervisor.stopped == 1


def test_model_control_is_refused_with_several_workers() -> None:
    check_control_request(ServerSettings(model_control=True))
    with pytest.raises(Forbidden, match=r"server\.workers 2"):
        check_control_request(ServerSettings(model_control=True, workers=2))
    with pytest.raises(Forbidden, match="model control is off"):
        check_control_request(ServerSettings(model_control=False, workers=2))
