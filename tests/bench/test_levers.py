"""The levers' replicas: a point's load split across server processes and its figures merged.

No server runs here: the drive and the probes are stand-ins that record what they were asked.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import levers, load


class FakeServer:
    def __init__(self, port: int) -> None:
        self.port = port


class FakeProbe:
    """What a server's ``/metrics`` would have said about the window: per port."""

    seen = {
        1: {"server_cpu_cores": 0.6, "batches": 10.0, "avg_batch_size": 4.0, "queue_wait_ms": 2.0,
            "inference_ms": 1.0, "cache": {"hits": 3.0, "misses": 7.0}},
        2: {"server_cpu_cores": 0.8, "batches": 30.0, "avg_batch_size": 8.0, "queue_wait_ms": 6.0,
            "inference_ms": 3.0},
    }  # fmt: skip

    def __init__(self, server: FakeServer) -> None:
        self.port = server.port

    async def mark(self) -> None:
        return None

    def result(self) -> dict[str, Any]:
        return self.seen[self.port]


def test_a_point_splits_its_load_and_merges_what_each_server_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(levers, "Probe", FakeProbe)
    asked: list[tuple[int, Any]] = []

    async def drive(port: int, requests: Any, share: Any, *args: Any) -> load.Window:
        asked.append((port, share))
        window = load.Window("closed", share, 2.0)
        for _ in range(10 * port):  # port 1: 10 answers, port 2: 20
            window.record(200, True, 0.001 * port)
        window.record(503, False, 0.0)
        return window

    lever = levers.SERVED["replicas_tiny"]
    servers = [FakeServer(1), FakeServer(2)]
    point = load.run(levers.measure_point(lever, "/predict", servers, drive, 32, 0, 0.0))
    assert sorted(asked) == [(1, 16), (2, 16)]
    assert point["level"] == 32 and point["requests"] == 30 and point["errors"] == 2
    assert point["throughput_rps"] == pytest.approx(30 / lever.duration_s)
    assert point["statuses"] == {"200": 30, "503": 2}
    assert point["server_cpu_cores"] == pytest.approx(1.4)
    assert point["avg_batch_size"] == pytest.approx((4 * 10 + 8 * 30) / 40)  # by batches, not by server
    assert point["queue_wait_ms"] == pytest.approx((2 * 10 + 6 * 30) / 40)
    assert point["cache"] == {"hits": 3.0, "misses": 7.0}

    asked.clear()
    load.run(levers.measure_point(lever, "/predict", servers, drive, 300.0, 0, 0.0))  # an open loop's rate
    assert sorted(asked) == [(1, 150.0), (2, 150.0)]


def test_the_replicas_lever_compares_one_process_with_two() -> None:
    lever = levers.SERVED["replicas_tiny"]
    assert [variant.replicas for variant in lever.variants] == [1, 2, 2]
    assert all(level % 2 == 0 for level in lever.levels)  # the clients split evenly
