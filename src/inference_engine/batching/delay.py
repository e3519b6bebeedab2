"""How long a forming batch waits for one more input: a fixed delay, or one chosen from measurements.

A fixed ``max_batch_delay_ms`` is right for one load only: long enough to fill batches under a
backlog is long enough to add latency to every request at medium load, when inputs arrive too
far apart for the wait to gather any. Waiting for another input is worth it when it is expected
sooner than the forward time that batching it saves; otherwise the wait only adds latency. The
adaptive delay measures both while serving:

* the **arrival gap**: a moving average of the time between inputs reaching the queue;
* the **per-batch cost**: forward time (as the batch loop sees it, hand-offs included) modelled
  as ``fixed + per_item x size``, least squares over the moving average of each batch size
  seen; ``fixed`` is what running the next input in this batch, instead of in one of its own,
  saves.

While inputs arrive faster than ``fixed`` every wait pays for itself (each input it gathers
saves more than the time waited for it), so a batch whose queue ran empty waits up to the
ceiling, ``max_batch_delay_ms`` after its first input; when they arrive further apart it does
not wait at all. Until it has seen batches of two sizes and two arrivals it behaves as the fixed
delay. With eager closing (nothing being decoded: run now) that makes one setting right from a
lone client to a backlog: Triton's and MLServer's advice to tune the delay by hand for the load,
done continuously.
"""

from __future__ import annotations

from typing import Literal

from inference_engine.batching.forward import ALPHA as _ALPHA
from inference_engine.batching.forward import ForwardTimes

DelayMode = Literal["fixed", "adaptive"]

#: A gap longer than this is an idle spell, not a rate: it restarts the average.
_IDLE_GAP_S = 1.0
#: Busy at least this share of the time, the batch loop is saturated: a backlog is building,
#: and a fuller batch is the only way to serve it faster.
SATURATED = 0.9


class BatchDelay:
    """The wait for one more input of one batcher; fed by :meth:`arrived` and :meth:`ran`."""

    def __init__(
        self, max_delay_s: float, mode: DelayMode = "fixed", forward: ForwardTimes | None = None
    ) -> None:
        self.max_delay_s = max_delay_s
        self.mode: DelayMode = mode
        #: Forward time by batch size; shared with the admission forecast, fed by :meth:`ran`.
        self.forward = forward or ForwardTimes()
        self._last_arrival: float | None = None
        self._gap_s: float | None = None
        self._idle_s = 0.0
        self._busy: float | None = None

    def arrived(self, now: float) -> None:
        """One input reached the queue at ``now`` (``time.monotonic()``)."""
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            if gap > _IDLE_GAP_S:
                self._gap_s = None
            elif self._gap_s is None:
                self._gap_s = gap
            else:
                self._gap_s += _ALPHA * (gap - self._gap_s)
        self._last_arrival = now

    def idled(self, seconds: float) -> None:
        """The batch loop waited ``seconds`` for the first input of the batch about to run."""
        self._idle_s = seconds

    def ran(self, size: int, seconds: float) -> None:
        """A forward pass of ``size`` inputs took ``seconds`` (after the idle time last reported)."""
        self.forward.observe(size, seconds)
        busy = seconds / (seconds + self._idle_s) if seconds + self._idle_s > 0 else 1.0
        self._busy = busy if self._busy is None else self._busy + _ALPHA * (busy - self._busy)
        self._idle_s = 0.0

    @property
    def busy_share(self) -> float | None:
        """Share of the batch loop's time in forward passes rather than waiting for a first input."""
        return self._busy

    @property
    def arrival_gap_s(self) -> float | None:
        """The average time between arrivals (None until two arrive within an idle spell)."""
        return self._gap_s

    def batch_overhead_s(self) -> float | None:
        """The fixed cost of one forward pass, whatever its size (None until two sizes ran)."""
        return self.forward.overhead_s()

    def wait_s(self) -> float:
        """How long a forming batch with no input queued behind it waits for another.

        The caller still closes the batch at ``max_batch_delay_ms`` after its first input.
        """
        if self.mode == "fixed":
            return self.max_delay_s
        overhead = self.forward.overhead_s()
        gap = self._gap_s
        if overhead is None or gap is None or self._busy is None:
            return self.max_delay_s  # still learning: behave as the fixed delay
        return self.max_delay_s if gap < overhead or self._busy >= SATURATED else 0.0
