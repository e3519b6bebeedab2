"""Per-model inference statistics in the shape of Triton's statistics extension.

Prometheus histograms answer "how is the fleet doing"; Triton users also read one model's
totals straight off the server (``GET /v2/models/{m}/stats``): successes and failures, time in
queue and in compute, executions per batch size, so the average batch size is
``inference_count / execution_count``. Counters here are plain integers updated on the event
loop only, so they need no lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStatistics:
    """Totals for one model since the server started (kept across watchdog restarts)."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=dict)

    def record_batch(self, size: int, compute_s: float, waits: list[float]) -> None:
        """One forward pass of ``size`` inputs (called by the batcher)."""
        self.execution_count += 1
        self.inference_count += size
        # Triton's accounting: every input is charged its batch's whole forward pass.
        self.compute_infer.add(compute_s * size, size)
        for wait in waits:
            self.queue.add(wait)
        self.batches.setdefault(size, Duration()).add(compute_s)
        self.last_inference_ms = int(time.time() * 1000)

    def record_request(self, seconds: float, ok: bool) -> None:
        """One request's outcome, from arrival to answer (called by the service)."""
        (self.success if ok else self.fail).add(seconds)

    def as_triton(self, name: str, version: str) -> dict[str, Any]:
        """This model's entry of ``model_stats`` in Triton's JSON shape."""
        zero = Duration().as_dict()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_dict(),
                "fail": self.fail.as_dict(),
                "queue": self.queue.as_dict(),
                "compute_input": zero,
                "compute_infer": self.compute_infer.as_dict(),
                "compute_output": zero,
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": zero,
                    "compute_infer": duration.as_dict(),
                    "compute_output": zero,
                }
                for size, duration in sorted(self.batches.items())
            ],
        }
