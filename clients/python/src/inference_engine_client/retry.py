"""When to try a request again, and how long to wait first.

Backoff is "full jitter" (AWS Architecture Blog, *Exponential Backoff And Jitter*): the n-th
retry waits a uniform random time in ``[0, min(max_delay, base * 2**n)]``. Randomising the whole
interval spreads clients that failed together, so they do not come back together and knock the
server over again.

When the server says how long to wait (``Retry-After`` on 429 and 503), that wins over the
backoff: it knows its own queue. A small jitter is added on top so that clients told "1 second"
at the same moment do not return in lockstep. A ``Retry-After`` longer than ``max_retry_after_s``
ends the retries instead of being cut short: retrying sooner than the server asked would only
earn another 503, and the error carries ``retry_after`` for a caller that wants to wait longer.
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC

#: Statuses that mean "not now" rather than "not this": rate limited, overloaded or not ready.
RETRY_STATUSES = frozenset({429, 503})
#: A proxy in front of the server could not reach it (502) or gave up waiting (504). Whether the
#: work ran is unknown, so these are retried only when asked for (inference has no side effects,
#: but a 504 that used up the deadline will usually just happen again).
GATEWAY_STATUSES = frozenset({502, 504})
_DELTA_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date (RFC 9110).

    ``now`` is the wall-clock time (``time.time()``) to measure a date against. ``None`` when the
    header is absent or unparsable; a date in the past means "now" (0).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):  # whole seconds per the RFC; a fraction is tolerated
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" per RFC 5322 means UTC, with no zone information
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts a call gets and how long to wait between them.

    ``max_attempts`` counts the first try (1 disables retries). Only failures that are safe and
    useful to repeat are retried: a connection that could not be made (nothing was sent), a
    connection lost before the answer when the request is idempotent (every call of this client
    is: inference and reads change nothing on the server), 429 and 503 (and 502/504 with
    ``retry_gateway_errors``). A 4xx input error is never retried: the same request gets the same
    answer. ``random`` is injectable so tests get a fixed schedule.
    """

    max_attempts: int = 3
    base_delay_s: float = 0.1
    max_delay_s: float = 5.0
    max_retry_after_s: float = 30.0
    retry_gateway_errors: bool = False
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.max_retry_after_s < 0:
            raise ValueError("delays must not be negative")

    @property
    def retry_statuses(self) -> frozenset[int]:
        return RETRY_STATUSES | GATEWAY_STATUSES if self.retry_gateway_errors else RETRY_STATUSES

    def backoff(self, retry: int) -> float:
        """Full-jitter wait before retry number ``retry`` (0 for the first retry)."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0 ** min(retry, 62))
        return self.random() * ceiling

    def delay(self, retry: int, retry_after: float | None) -> float | None:
        """The wait before retry number ``retry``, or ``None`` when the server asks for too long."""
        if retry_after is None:
            return self.backoff(retry)
        if retry_after > self.max_retry_after_s:
            return None
        return retry_after + self.random() * min(self.base_delay_s, self.max_delay_s)
