"""The admission decision of one batcher: refuse at once what would only time out in the queue.

The queue's bound (503 ``queue_full``) is one reason; under ``admission: predictive`` the other
is the deadline: the :class:`~.forecast.CompletionForecast` says when an input queued now would
be answered, and one whose deadline is earlier is refused (503 ``deadline_unmeetable``, with a
``Retry-After`` of how much later the same request would fit) rather than queued to fail with
504 after holding a slot. Both refusals are counted by reason; every admitted input's prediction
is later scored against when it was answered, so the error is on the dashboard, not a guess.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Literal

from inference_engine.batching.forecast import CompletionForecast
from inference_engine.batching.forward import ForwardTimes
from inference_engine.errors import DeadlineExceeded, DeadlineUnmeetable
from inference_engine.metrics import Metrics

AdmissionMode = Literal["predictive", "queue_only"]


class Admission:
    """Judges new inputs of one batcher against their deadlines and keeps the score."""

    def __init__(
        self,
        model: str,
        version: str,
        mode: AdmissionMode,
        forecast: CompletionForecast,
        metrics: Metrics,
    ) -> None:
        self.model = model
        self.mode: AdmissionMode = mode
        self.forecast = forecast
        # Both reasons exported from the start (at 0), so a rate over them is defined at once.
        self._refused = {
            reason: metrics.admission_refusals.labels(model, version, reason)
            for reason in ("deadline", "queue_full")
        }
        self._error = metrics.admission_prediction_error.labels(model, version)
        self._early = metrics.admission_predictions.labels(model, version, "early")
        self._late = metrics.admission_predictions.labels(model, version, "late")

    @classmethod
    def build(
        cls, model: str, version: str, mode: AdmissionMode, forward: ForwardTimes, max_batch: int,
        instances: int, metrics: Metrics,
    ) -> Admission:  # fmt: skip
        return cls(model, version, mode, CompletionForecast(forward, max_batch, instances), metrics)

    def queue_full(self) -> None:
        """Count a refusal for want of room."""
        self._refused["queue_full"].inc()

    def judge(self, deadline: float, ahead: int, running: Iterable[tuple[int, float]]) -> float | None:
        """When an input with ``ahead`` inputs before it would be answered (``time.monotonic()``;
        None when not predicting); raises ``DeadlineUnmeetable`` when that is past ``deadline``."""
        if self.mode != "predictive":
            return None
        now = time.monotonic()
        if now >= deadline:  # nothing to predict: it is late already (its body took its time)
            raise DeadlineExceeded(f"no answer within the request deadline ({self.model})")
        seconds = self.forecast.seconds_until_answer(ahead, running)
        if seconds is None:
            return None
        if now + seconds > deadline:
            self._refused["deadline"].inc()
            budget_ms = max(0.0, deadline - now) * 1000
            raise DeadlineUnmeetable(
                f"model {self.model} would answer in about {seconds * 1000:.0f} ms ({ahead} inputs "
                f"ahead), after this request's deadline ({budget_ms:.0f} ms left); retry later or "
                "with a longer X-Request-Timeout-Ms",
                retry_after_s=now + seconds - deadline,
            )
        return now + seconds

    def answered(self, predicted_at: float, answered_at: float) -> None:
        """Score one admitted input's prediction against when it was answered."""
        error_s = answered_at - predicted_at
        self._error.observe(abs(error_s))
        (self._late if error_s > 0 else self._early).inc()
