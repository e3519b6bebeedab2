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
    # 9 ahead: two full batches (40 ms each), then it runs with the one left over (2 inputs).
    assert forecast().seconds_until_answer(9, []) == pytest.approx(0.040 + 0.040 + 0.020)


def test_a_running_batch_counts_what_is_left_of_it() -> None:
    assert forecast().seconds_until_answer(0, [(4, 0.030)]) == pytest.approx(0.010 + 0.010)
    # Overdue: it may end any moment, never a negative wait.
    assert forecast().seconds_until_answer(0, [(4, 0.100)]) == pytest.approx(0.010)


def test_instances_run_batches_side_by_side() -> None:
    one = forecast(instances=1).seconds_until_answer(8, [])
    two = forecast(instances=2).seconds_until_answer(8, [])
    assert one == pytest.approx(0.040 * 2 + 0.010)
    assert two == pytest.approx(0.040 + 0.010)
