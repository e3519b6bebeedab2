"""Forward time per batch size: averages of what was seen, a line through them for the rest."""

from __future__ import annotations

import pytest

from inference_engine.batching.forward import ForwardTimes


def test_nothing_measured_estimates_nothing() -> None:
    times = ForwardTimes()
    assert not times.measured
    assert times.estimate(4) is None
    assert times.overhead_s() is None


def test_one_size_scales_up_per_input_and_never_down() -> None:
    times = ForwardTimes()
    times.observe(2, 0.020)
    assert times.measured
    assert times.estimate(2) == pytest.approx(0.020)
    assert times.estimate(1) == pytest.approx(0.020)  # no line yet: never claims a smaller batch is cheaper
    assert times.estimate(8) == pytest.approx(0.080)  # an upper bound: every input charged in full
    assert times.overhead_s() is None


def test_two_sizes_give_the_line_and_its_intercept() -> None:
    times = ForwardTimes()
    times.observe(1, 0.012)
    times.observe(8, 0.026)  # 10 ms fixed + 2 ms per input
    assert times.overhead_s() == pytest.approx(0.010)
    assert times.estimate(4) == pytest.approx(0.018)
    assert times.estimate(8) == pytest.approx(0.026)  # a size seen answers from its own average


def test_averages_move_towards_new_measurements() -> None:
    times = ForwardTimes()
    times.observe(4, 0.040)
    for _ in range(50):
        times.observe(4, 0.010)
    assert times.estimate(4) == pytest.approx(0.010, rel=0.01)


def test_noise_never_makes_a_negative_intercept_or_slope() -> None:
    times = ForwardTimes()
    times.observe(1, 0.030)
    times.observe(8, 0.010)  # bigger batch faster: noise
    overhead = times.overhead_s()
    assert overhead is not None and overhead >= 0
    estimate = times.estimate(16)
    assert estimate is not None and estimate >= 0
