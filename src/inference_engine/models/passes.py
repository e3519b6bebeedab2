"""Forward passes of one model's instances running at once, counted across the instances.

A model with ``instances: N`` runs up to N batches at a time, one per model thread. On a CPU the
instances share the cores, and so the intra-op thread budget: a pass that starts alone may take
every thread, two passes at once do better with half each than with all of them each, where the
threads of both wait for one another at every operator (measured in docs/PERFORMANCE.md, lever
``instances_onnx``). The runtime gives the instances of one version one counter; a handler that
sizes its threads per pass (the ONNX Runtime handler) asks it how many passes run.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class RunningPasses:
    """How many forward passes of one model version run now (one per instance at most)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    @contextlib.contextmanager
    def running(self) -> Iterator[int]:
        """Count one pass while the block runs; yields the passes running, this one included."""
        with self._lock:
            self._running += 1
            count = self._running
        try:
            yield count
        finally:
            with self._lock:
                self._running -= 1


def thread_shares(budget: int, instances: int) -> list[int]:
    """The thread counts a pass may get: ``budget`` split evenly among 1..``instances`` passes
    (at least one thread each), largest first, without repeats."""
    return sorted({max(1, budget // passes) for passes in range(1, instances + 1)}, reverse=True)


def share_for(budget: int, passes: int) -> int:
    """Threads for one of ``passes`` passes running at once."""
    return max(1, budget // max(1, passes))
