"""The answer-time prediction admission acts on: running batches, full batches ahead, its own."""

from __future__ import annotations

import pytest

from inference_engine.batching.forecast import CompletionForecast
from inference_engine.batching.forward import ForwardTimes


def forecast(max_batch: int = 4, instances: int = 1) -> CompletionForecast:
    times = ForwardTimes()
    times.observe(1, 0.010)
    times.observe(4, 0.040)  # 10 ms per input, nothing fixed
    return CompletionForecast(times, max_batch, instances)


def test_unmeasured_predicts_nothing() -> None:
    assert CompletionForecast(ForwardTimes(), 4, 1).seconds_until_answer(10, []) is None


def test_an_idle_model_answers_in_one_pass() -> None:
    assert forecast().seconds_until_answer(0, []) == pytest.approx(0.010)


def test_inputs_ahead_leave_in_full_batches_then_its_own_batch_runs() -> None:
    # 9 ahead: two full batches (40 ms each), then its own: behind a backlog, full too.
    assert forecast().seconds_until_answer(9, []) == pytest.approx(0.040 + 0.040 + 0.040)
    # 2 ahead: no backlog; its batch closes with the three inputs there.
    assert forecast().seconds_until_answer(2, []) == pytest.approx(0.030)


def test_a_running_batch_counts_what_is_left_of_it() -> None:
    assert forecast().seconds_until_answer(0, [(4, 0.030)]) == pytest.approx(0.010 + 0.010)
    # Overdue: it may end any moment, never a negative wait.
    assert forecast().seconds_until_answer(0, [(4, 0.100)]) == pytest.approx(0.010)


def test_instances_run_batches_side_by_side() -> None:
    one = forecast(instances=1).seconds_until_answer(8, [])
    two = forecast(instances=2).seconds_until_answer(8, [])
    assert one == pytest.approx(0.040 * 2 + 0.040)
    assert two == pytest.approx(0.040 + 0.040)


def test_the_turnaround_between_batches_is_paid_once_per_batch_ahead() -> None:
    predicted = forecast()
    for _ in range(100):
        predicted.turned_around(0.005)
    assert predicted.turnaround_s == pytest.approx(0.005, rel=0.01)
    # Two full batches ahead: each followed by a turnaround before the next starts.
    assert predicted.seconds_until_answer(8, []) == pytest.approx(2 * (0.040 + 0.005) + 0.040, rel=0.01)
    # A running batch is followed by one too; an idle model starts at once.
    assert predicted.seconds_until_answer(0, [(4, 0.030)]) == pytest.approx(0.010 + 0.005 + 0.010, rel=0.01)
    assert predicted.seconds_until_answer(0, []) == pytest.approx(0.010)
