"""How long a forward pass of each batch size takes here, learned while serving.

Two decisions read it: how long a forming batch waits for one more input (:mod:`.delay`: the
fixed per-batch part of a pass is what batching one more input saves) and whether a new input
can still finish before its deadline (:mod:`.forecast`). Each batch size keeps a moving average
of what it took as the batch loop sees it (hand-offs included); a size not seen yet is
estimated from the least-squares line ``fixed + per_item x size`` through the sizes that were.
The runtime seeds it with timed passes right after warm-up, so the first requests are judged
on measurements rather than on nothing.
"""

from __future__ import annotations

#: Weight of the newest sample in the moving averages: adapts within tens of batches.
ALPHA = 0.2


class ForwardTimes:
    """Seconds per forward pass, by batch size, for one batcher."""

    def __init__(self) -> None:
        self._seconds: dict[int, float] = {}
        self._line: tuple[float, float] | None = None  # (fixed, per item), refitted per pass

    def observe(self, size: int, seconds: float) -> None:
        """A forward pass of ``size`` inputs took ``seconds``."""
        previous = self._seconds.get(size)
        self._seconds[size] = seconds if previous is None else previous + ALPHA * (seconds - previous)
        self._line = self._fit()

    @property
    def measured(self) -> bool:
        """At least one pass was seen (estimates exist)."""
        return bool(self._seconds)

    def overhead_s(self) -> float | None:
        """The fixed cost of one pass, whatever its size (None until two sizes ran)."""
        return None if self._line is None else self._line[0]

    def estimate(self, size: int) -> float | None:
        """Expected seconds for a pass of ``size`` inputs (None before any pass was seen)."""
        seen = self._seconds.get(size)
        if seen is not None:
            return seen
        if self._line is not None:
            fixed, per_item = self._line
            return fixed + per_item * size
        if not self._seconds:
            return None
        # One size seen: scale it, charging the rest per input (an upper bound for batching).
        ((only, seconds),) = self._seconds.items()
        return seconds * max(size, 1) / only if size > only else seconds

    def _fit(self) -> tuple[float, float] | None:
        """Least squares through each batch size's average; the intercept is never negative."""
        if len(self._seconds) < 2:
            return None
        sizes = list(self._seconds)
        times = [self._seconds[size] for size in sizes]
        mean_size = sum(sizes) / len(sizes)
        mean_time = sum(times) / len(times)
        spread = sum((size - mean_size) ** 2 for size in sizes)
        slope = sum((s - mean_size) * (t - mean_time) for s, t in zip(sizes, times, strict=True)) / spread
        fixed = max(0.0, mean_time - slope * mean_size)
        return fixed, max(slope, 0.0)
