"""What the client's tests share; they need only the client, httpx, pytest and pytest-asyncio."""

from __future__ import annotations

import socket


class FakeClock:
    """A ``time.monotonic`` stand-in that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    """A loopback port with nothing listening on it (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
