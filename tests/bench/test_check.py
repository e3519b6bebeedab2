"""The performance regression check's arithmetic: figures from a run's summary, floors from
several runs, and the comparison that fails (with the numbers) past the allowed margin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import check


def summary(rps32: float, p50_1: float) -> dict[str, Any]:
    """A workload summary as bench.report writes it (JSON: the client counts are strings)."""
    return {
        "raw": {
            "pipeline_ips": {"median": 100.0},
            "forward1_ips": {"median": 200.0},  # 5 ms a forward pass
            "decode_ms": {"total_ms": 3.0},
        },
        "closed": {"1": {"p50_ms": {"median": p50_1}}, "32": {"throughput_rps": {"median": rps32}}},
    }


def test_figures_are_ratios_within_one_run() -> None:
    assert check.figures(summary(80.0, 12.0)) == {"served_over_raw_32": 0.8, "latency_over_raw_1": 1.5}


def floors(
    baseline_served: float = 0.8, baseline_latency: float = 1.5, noise: float = 0.05
) -> dict[str, Any]:
    entry = {"served_over_raw_32": {"baseline": baseline_served, "noise": noise},
             "latency_over_raw_1": {"baseline": baseline_latency, "noise": noise}}  # fmt: skip
    return {"workloads": {"tiny_cnn": entry}}


def test_within_the_noise_passes_and_past_it_fails_with_the_numbers() -> None:
    _, failures = check.compare(
        {"tiny_cnn": {"served_over_raw_32": 0.77, "latency_over_raw_1": 1.55}}, floors(), 0
    )
    assert failures == []
    _, failures = check.compare(
        {"tiny_cnn": {"served_over_raw_32": 0.70, "latency_over_raw_1": 1.70}}, floors(), 0
    )
    assert len(failures) == 2 and all(line.startswith("FAIL") for line in failures)
    # twice the recorded noise of 5%
    assert "served_over_raw_32 = 0.700 (needs >= 0.720: baseline 0.800, margin 10%)" in failures[0]
    assert "latency_over_raw_1 = 1.700 (needs <= 1.650: baseline 1.500, margin 10%)" in failures[1]


def test_a_margin_wider_than_the_noise_only_catches_gross_regressions() -> None:
    halved = {"tiny_cnn": {"served_over_raw_32": 0.41, "latency_over_raw_1": 2.2}}
    assert check.compare(halved, floors(), 0.5)[1] == []
    worse = {"tiny_cnn": {"served_over_raw_32": 0.39, "latency_over_raw_1": 2.3}}
    assert len(check.compare(worse, floors(), 0.5)[1]) == 2


def test_a_workload_not_measured_fails() -> None:
    assert check.compare({}, floors(), 0)[1] == ["tiny_cnn: not measured"]


def test_update_records_the_median_and_the_spread_of_the_runs() -> None:
    runs = [
        {name: {"served_over_raw_32": v, "latency_over_raw_1": 1.0} for name in check.CHECKED}
        for v in (0.8, 0.9, 0.85)
    ]
    written = check.update(runs)
    entry = written["workloads"]["tiny_cnn"]["served_over_raw_32"]
    assert entry["baseline"] == 0.85 and entry["noise"] == pytest.approx(0.1 / 0.85, abs=1e-4)
    assert entry["runs"] == [0.8, 0.9, 0.85]
    assert written["how"] == "python -m bench.check --update --runs 3"


def test_main_checks_a_finished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"summary": {"tiny_cnn": summary(80.0, 12.0)}}))
    stored = tmp_path / "floors.json"
    stored.write_text(json.dumps(floors()))
    assert check.main(["--results", str(results), "--floors", str(stored)]) == 0
    stored.write_text(json.dumps(floors(baseline_served=0.95)))
    assert check.main(["--results", str(results), "--floors", str(stored)]) == 1
    assert "1 performance figure(s) regressed" in capsys.readouterr().err


def test_the_stored_floors_cover_the_checked_workloads() -> None:
    stored = json.loads(check.FLOORS.read_text())
    assert set(stored["workloads"]) == set(check.CHECKED)
    for figures in stored["workloads"].values():
        assert set(figures) == set(check.HIGHER)
        assert all(0 <= entry["noise"] < 0.5 and entry["baseline"] > 0 for entry in figures.values())


def test_a_failing_workload_is_measured_again_and_judged_on_its_better_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One slow run (a neighbour took a core) does not fail the check; two do."""
    stored = tmp_path / "floors.json"
    stored.write_text(json.dumps(floors(baseline_latency=1.5, noise=0.05)))
    good = {"served_over_raw_32": 0.8, "latency_over_raw_1": 1.5}
    slow = {"served_over_raw_32": 0.8, "latency_over_raw_1": 3.0}
    calls: list[tuple[str, ...]] = []

    def runs(*sequence: dict[str, float]) -> None:
        queue = list(sequence)

        def measure(cache: Path, names: tuple[str, ...] = check.CHECKED) -> dict[str, dict[str, float]]:
            calls.append(tuple(names))
            return {"tiny_cnn": queue.pop(0)}

        monkeypatch.setattr(check, "measure", measure)

    runs(slow, good)
    assert check.main(["--floors", str(stored), "--margin", "0.5"]) == 0
    assert calls == [check.CHECKED, ("tiny_cnn",)]
    calls.clear()
    runs(slow, slow)
    assert check.main(["--floors", str(stored), "--margin", "0.5"]) == 1
    calls.clear()
    runs(good)
    assert check.main(["--floors", str(stored), "--margin", "0.5"]) == 0
    assert calls == [check.CHECKED]  # nothing failed: no second run


def test_failure_lines_name_their_workloads() -> None:
    lines = ["FAIL tiny_cnn latency_over_raw_1 = 3.785 (needs <= 3.198)", "efficientnet_lite0: not measured"]
    assert check.failing_workloads(lines) == ["tiny_cnn", "efficientnet_lite0"]
    assert check.failing_workloads([]) == []
