"""Per-model statistics in Triton's shape: what each counter means."""

from __future__ import annotations

from inference_engine.stats import ModelStatistics


def test_batches_and_requests_are_accounted_like_triton() -> None:
    stats = ModelStatistics()
    stats.record_batch(4, 0.5, [0.1, 0.1, 0.2, 0.2])
    stats.record_batch(1, 0.25, [0.05])
    stats.record_request(0.7, ok=True)
    stats.record_request(0.1, ok=False)
    body = stats.as_triton("m", "1")
    assert body["inference_count"] == 5 and body["execution_count"] == 2  # average batch 2.5
    inference = body["inference_stats"]
    # Each input is charged its whole batch's forward pass: 4 x 0.5 s + 1 x 0.25 s.
    assert inference["compute_infer"] == {"count": 5, "ns": 2_250_000_000}
    assert inference["queue"] == {"count": 5, "ns": 650_000_000}
    assert inference["success"] == {"count": 1, "ns": 700_000_000}
    assert inference["fail"] == {"count": 1, "ns": 100_000_000}
    assert [b["batch_size"] for b in body["batch_stats"]] == [1, 4]
    assert body["batch_stats"][1]["compute_infer"] == {"count": 1, "ns": 500_000_000}
    assert body["last_inference"] > 0
