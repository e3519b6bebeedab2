"""bench/admission.py: a refusal's answer read, the summary on a canned session, and the script's
quick mode end to end (a real server, about 10 s): every figure produced, the accounting exact.
No timing is asserted (the refusal latency's target is the script's to judge on a quiet machine)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import admission

REFUSAL = (
    b'{"error": {"type": "deadline_unmeetable", "message": "model m would answer in about 312 ms '
    b'(57 inputs ahead), after this request\'s deadline (19 ms left); retry later", "request_id": "r"}}'
)


def test_a_refusal_gives_its_code_prediction_and_retry_after() -> None:
    answer = admission.Answer(503, {"retry-after": "1"}, REFUSAL, 2.5).as_dict()
    assert answer == {
        "status": 503,
        "code": "deadline_unmeetable",
        "latency_ms": 2.5,
        "predicted_ms": 312.0,
        "ahead": 57,
        "retry_after_s": 1.0,
    }
    ok = admission.Answer(200, {}, b'{"predictions": []}', 9.0).as_dict()
    assert ok["code"] is None and ok["predicted_ms"] is None and ok["retry_after_s"] is None


def test_the_summary_accounts_for_every_forward_pass() -> None:
    refused = {"status": 503, "code": "deadline_unmeetable", "latency_ms": 3.0, "predicted_ms": 300.0,
               "ahead": 50, "retry_after_s": 1.0}  # fmt: skip
    admitted = {"status": 200, "code": None, "latency_ms": 400.0}
    before = {"batch_size_sum": 100.0, "batch_size_count": 20.0, "refused_deadline": 0.0, "status:200": 110}
    after = {
        "batch_size_sum": 1101.0, "batch_size_count": 150.0, "refused_deadline": 2.0, "status:200": 1111,
        "admission_error_s_sum": 2.0, "admission_error_s_count": 1000.0, "predicted_early": 100.0,
        "predicted_late": 900.0,
    }  # fmt: skip
    measured = {
        "idle_probes": [{"status": 200, "code": None, "latency_ms": 9.0}] * 3,
        "probes": [refused, {**refused, "latency_ms": 5.0}, admitted],
        "background": {"statuses": {"200": 1000}},
        "metrics": {"before": before, "after": after},
        "error_buckets": {"0.001": 0.0, "0.01": 500.0, "0.1": 1000.0, "inf": 1000.0},
    }
    s = admission.summarise(measured)
    assert s["control"] == {"probes": 3, "answered": 3, "statuses": {"200": 3}, "p50_ms": 9.0}
    probes = s["probes"]
    assert (probes["sent"], probes["refused"], probes["admitted"]) == (3, 2, 1)
    assert probes["refusal_p50_ms"] == 4.0 and probes["refusal_max_ms"] == 5.0 and probes["target_met"]
    assert probes["predicted_ms"] == 300.0 and probes["ahead"] == 50
    forward = s["forward"]
    assert (
        forward["inputs_forwarded"] == 1001
        and forward["answered_200"] == 1001
        and forward["extra_inputs"] == 0
    )
    assert forward["refusals_counted"] == 2 and forward["dropped"] == 0 and forward["server_200"] == 1001
    prediction = s["prediction"]
    assert prediction["mean_error_ms"] == pytest.approx(2.0) and prediction["late_share"] == pytest.approx(
        0.9
    )
    assert prediction["p50_error_ms"] == pytest.approx(10.0)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_quick_mode_measures_every_figure(tmp_path: Path) -> None:
    assert admission.main(["--quick", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "admission-quick.json").read_text())
    s = document["summary"]
    assert s["control"]["probes"] == 5 and s["probes"]["sent"] == 15
    assert s["probes"]["refused"] + s["probes"]["admitted"] <= 15
    for key in ("refusal_p50_ms", "refusal_max_ms", "predicted_ms", "ahead", "retry_after_s"):
        assert s["probes"][key] is not None and s["probes"][key] >= 0
    assert isinstance(s["probes"]["target_met"], bool)
    forward = s["forward"]
    assert forward["inputs_forwarded"] > 0 and forward["batches"] > 0
    # Exact: the background stopped gracefully, so every input forwarded was answered 200.
    assert forward["extra_inputs"] == 0 and forward["dropped"] == 0
    assert forward["refusals_counted"] == s["probes"]["refused"]
    prediction = s["prediction"]
    assert prediction["predictions"] > 0 and prediction["mean_error_ms"] >= 0
    assert prediction["late_share"] is not None and not math.isnan(prediction["late_share"])
    assert document["measured"]["background"]["statuses"].get("200", 0) > 0
    text = (tmp_path / "admission-quick.md").read_text()
    assert "| refusal latency p50 / p99 / max |" in text and "| inputs dropped in the queue |" in text
    assert not list(tmp_path.glob("*.log.tmp"))
