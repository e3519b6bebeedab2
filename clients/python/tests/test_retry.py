"""The retry schedule: full-jitter backoff, Retry-After (seconds and HTTP dates), the limits."""

from __future__ import annotations

import email.utils
import random

import pytest

from inference_engine_client.retry import RetryPolicy, parse_retry_after

NOW = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()


def test_backoff_doubles_from_the_base_up_to_the_cap_when_the_jitter_draws_its_maximum() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0, random=lambda: 1.0)

    assert [policy.backoff(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_full_jitter_scales_the_whole_interval() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=1.0, random=lambda: 0.25)

    assert [policy.backoff(n) for n in range(5)] == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.25])


def test_full_jitter_stays_within_zero_and_the_ceiling_and_spreads_clients_out() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0, random=random.Random(7).random)
    draws = [policy.backoff(3) for _ in range(2000)]  # ceiling min(4, 0.5 * 8) = 4

    assert all(0.0 <= d <= 4.0 for d in draws)
    assert min(draws) < 0.1 and max(draws) > 3.9  # the whole interval, not a narrow band


def test_a_huge_retry_number_does_not_overflow() -> None:
    assert RetryPolicy(max_delay_s=3.0, random=lambda: 1.0).backoff(10_000) == 3.0


def test_retry_after_wins_over_backoff_with_a_little_jitter_on_top() -> None:
    policy = RetryPolicy(base_delay_s=0.1, max_delay_s=5.0, random=lambda: 0.5)

    assert policy.delay(0, 2.0) == pytest.approx(2.05)
    assert policy.delay(0, None) == pytest.approx(0.05)


def test_retry_after_beyond_the_maximum_wait_ends_the_retries() -> None:
    policy = RetryPolicy(max_retry_after_s=10.0)

    assert policy.delay(0, 10.0) is not None
    assert policy.delay(0, 10.5) is None


def test_gateway_errors_are_retried_only_when_asked() -> None:
    assert RetryPolicy().retry_statuses == {429, 503}
    assert RetryPolicy(retry_gateway_errors=True).retry_statuses == {429, 502, 503, 504}


@pytest.mark.parametrize(
    "settings", [{"max_attempts": 0}, {"base_delay_s": -1}, {"max_delay_s": -0.1}, {"max_retry_after_s": -1}]
)
def test_nonsense_policies_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("3", 3.0), (" 7 ", 7.0), ("0", 0.0), ("1.5", 1.5), ("120", 120.0)],
)
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 21 Oct 2015 07:28:10 GMT",  # IMF-fixdate, the preferred form
        "Wednesday, 21-Oct-15 07:28:10 GMT",  # obsolete RFC 850
        "Wed Oct 21 07:28:10 2015",  # obsolete asctime
        "Wed, 21 Oct 2015 07:28:10 -0000",  # no zone information: UTC
        "Wed, 21 Oct 2015 09:28:10 +0200",
    ],
)
def test_retry_after_as_an_http_date_is_measured_from_now(value: str) -> None:
    assert parse_retry_after(value, now=NOW) == pytest.approx(10.0)


def test_an_http_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now=NOW) == 0.0


def test_an_http_date_uses_the_wall_clock_by_default() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # long past


@pytest.mark.parametrize(
    "value", [None, "", "   ", "soon", "-1", "1e3", "nan", "inf", "+5", "Wed, 32 Oct 2015 07:28:10 GMT"]
)
def test_unparsable_retry_after_is_ignored(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None
