"""A circuit breaker: stop calling a server that keeps failing, and probe it now and then.

Retries help with a blip; against a server that is down they multiply the load and make every
caller wait out its timeouts. After ``failure_threshold`` consecutive failures (no connection,
a timeout, any 5xx) the breaker *opens*: calls fail at once with :class:`CircuitOpen`, without
touching the network. After ``reset_timeout_s`` it is *half-open*: exactly one call goes through
as a probe (the others still fail fast). The probe's success closes the breaker; its failure
opens it for another cool-down. A 4xx counts as success: the server answered, the request was
wrong. 429 counts as neither: it is about this client's rate, not the server's health, and is
handled by ``Retry-After``.

Each call that the breaker lets through gets a :class:`Permit` stamped with the breaker's
generation; a verdict from an older generation (a slow call that started before the breaker
opened) is ignored, so only the probe decides a half-open breaker. The state lives behind a
lock, so one breaker can serve the threads of a synchronous client; the critical sections never
block, so the asynchronous client uses the same class from its event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from inference_engine_client.errors import CircuitOpen

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True)
class Permit:
    """Leave to make one call; hand it back with a verdict (or :meth:`CircuitBreaker.release`)."""

    generation: int
    probe: bool


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> half-open after a cool-down -> closed or open."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout_s < 0:
            raise ValueError("reset_timeout_s must not be negative")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._generation = 0
        self._probing = False

    @property
    def state(self) -> State:
        """The current state; an open breaker whose cool-down has passed reads as half-open."""
        with self._lock:
            self._refresh()
            return self._state

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    def acquire(self) -> Permit:
        """Leave for one call, or :class:`CircuitOpen` when the breaker refuses it."""
        with self._lock:
            self._refresh()
            if self._state == "closed":
                return Permit(self._generation, probe=False)
            if self._state == "half_open" and not self._probing:
                self._probing = True
                return Permit(self._generation, probe=True)
            wait = max(0.0, self._opened_at + self.reset_timeout_s - self._clock())
            what = "a probe is in flight" if self._state == "half_open" else f"retry in {wait:.2f}s"
            raise CircuitOpen(
                f"circuit open after {self._failures} consecutive failures; {what}", retry_after=wait
            )

    def record_success(self, permit: Permit) -> None:
        """The call got an answer from a healthy server: reset the count, close a half-open breaker."""
        with self._lock:
            if permit.generation != self._generation:
                return
            if self._state == "half_open" and permit.probe:
                self._transition("closed")
            elif self._state == "closed":
                self._failures = 0

    def record_failure(self, permit: Permit) -> None:
        """The call failed in a way that says the server is unwell: count it, maybe open."""
        with self._lock:
            if permit.generation != self._generation:
                return
            if self._state == "half_open" and permit.probe:
                self._failures += 1
                self._transition("open")
            elif self._state == "closed":
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    self._transition("open")

    def release(self, permit: Permit) -> None:
        """The call ended without a verdict (cancelled, 429): free the probe slot, change nothing."""
        with self._lock:
            if permit.probe and permit.generation == self._generation:
                self._probing = False

    def _refresh(self) -> None:
        if self._state == "open" and self._clock() - self._opened_at >= self.reset_timeout_s:
            self._transition("half_open")

    def _transition(self, state: State) -> None:
        self._state = state
        self._generation += 1
        self._probing = False
        if state == "open":
            self._opened_at = self._clock()
        elif state == "closed":
            self._failures = 0
