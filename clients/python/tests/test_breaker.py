"""The circuit breaker's state machine, driven by a fake clock."""

from __future__ import annotations

import contextlib
import threading

import pytest

from client_support import FakeClock
from inference_engine_client.breaker import CircuitBreaker
from inference_engine_client.errors import CircuitOpen, InferenceError


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def breaker(clock: FakeClock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, reset_timeout_s=10.0, clock=clock)


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.record_failure(breaker.acquire())


def test_opens_after_n_consecutive_failures(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 2

    fail(breaker)

    assert breaker.state == "open"


def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    breaker.record_success(breaker.acquire())
    fail(breaker, 2)

    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 2


def test_open_fails_fast_and_says_when_to_come_back(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    clock.advance(4.0)

    with pytest.raises(CircuitOpen) as caught:
        breaker.acquire()

    assert isinstance(caught.value, InferenceError)
    assert caught.value.code == "circuit_open"
    assert caught.value.status is None
    assert caught.value.retry_after == pytest.approx(6.0)
    assert "3 consecutive failures" in caught.value.message


def test_half_open_after_the_cool_down_lets_exactly_one_probe_through(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    fail(breaker, 3)
    clock.advance(9.99)
    assert breaker.state == "open"
    clock.advance(0.01)
    assert breaker.state == "half_open"

    probe = breaker.acquire()
    assert probe.probe
    with pytest.raises(CircuitOpen, match="probe is in flight"):
        breaker.acquire()


def test_a_successful_probe_closes_the_breaker(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    clock.advance(10.0)

    breaker.record_success(breaker.acquire())

    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0
    assert not breaker.acquire().probe


def test_a_failed_probe_reopens_for_a_whole_new_cool_down(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    clock.advance(15.0)

    breaker.record_failure(breaker.acquire())

    assert breaker.state == "open"
    clock.advance(9.0)
    assert breaker.state == "open"  # counted from the probe's failure, not from the first opening
    clock.advance(1.0)
    assert breaker.state == "half_open"


def test_a_released_probe_frees_the_slot_without_a_verdict(breaker: CircuitBreaker, clock: FakeClock) -> None:
    fail(breaker, 3)
    clock.advance(10.0)

    breaker.release(breaker.acquire())

    assert breaker.state == "half_open"
    assert breaker.acquire().probe


def test_verdicts_from_calls_that_started_before_the_breaker_opened_are_ignored(
    breaker: CircuitBreaker, clock: FakeClock
) -> None:
    slow = breaker.acquire()  # in flight while other calls fail
    fail(breaker, 3)
    clock.advance(10.0)
    probe = breaker.acquire()

    breaker.record_success(slow)  # not the probe: says nothing about the server now
    assert breaker.state == "half_open"
    breaker.record_failure(slow)
    assert breaker.state == "half_open"
    breaker.release(slow)
    with pytest.raises(CircuitOpen):  # the probe slot is still taken
        breaker.acquire()

    breaker.record_failure(probe)
    assert breaker.state == "open"


def test_late_verdicts_while_open_change_nothing(breaker: CircuitBreaker, clock: FakeClock) -> None:
    slow_success, slow_failure = breaker.acquire(), breaker.acquire()
    fail(breaker, 3)
    clock.advance(5.0)

    breaker.record_success(slow_success)  # does not close an open breaker
    breaker.record_failure(slow_failure)  # does not restart the cool-down

    assert breaker.state == "open"
    clock.advance(5.0)
    assert breaker.state == "half_open"


def test_the_count_is_exact_under_threads() -> None:
    breaker = CircuitBreaker(failure_threshold=100_000)

    def hammer() -> None:
        for _ in range(2_000):
            breaker.record_failure(breaker.acquire())

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert breaker.consecutive_failures == 16_000
    assert breaker.state == "closed"


def test_exactly_one_thread_gets_the_probe() -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout_s=0.0)
    breaker.record_failure(breaker.acquire())
    barrier = threading.Barrier(8)
    probes: list[bool] = []

    def race() -> None:
        barrier.wait()
        with contextlib.suppress(CircuitOpen):
            probes.append(breaker.acquire().probe)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert probes == [True]


@pytest.mark.parametrize("settings", [{"failure_threshold": 0}, {"reset_timeout_s": -1.0}])
def test_nonsense_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        CircuitBreaker(**settings)  # type: ignore[arg-type]
