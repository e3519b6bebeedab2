"""The benchmark suite's pure pieces: statistics, schedules, metrics parsing, the report, the client.

No model is loaded and no benchmark runs here; the load generator is exercised against a
trivial asyncio HTTP server on loopback for well under a second.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from bench.server import parse_metrics, shadow_counters, window_metrics
from bench.workloads import SHADOW_OVERRIDES, model_specs, write_repository

from bench import load, report, run

# -- statistics --------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0, 1, 50, 95, 99, 99.9, 100])
def test_percentile_matches_numpys_linear_interpolation(p: float) -> None:
    values = sorted(random.Random(1).expovariate(1.0) for _ in range(137))
    assert load.percentile(values, p) == pytest.approx(float(np.percentile(values, p)))


def test_percentile_of_nothing_is_nan_and_summaries_are_in_ms() -> None:
    assert math.isnan(load.percentile([], 50))
    summary = load.summarise([0.010, 0.020, 0.030, 0.040, 1.0])
    assert summary["p50_ms"] == pytest.approx(30.0)
    assert summary["max_ms"] == pytest.approx(1000.0)
    assert summary["mean_ms"] == pytest.approx(220.0)


def test_spread_is_median_and_relative_range_ignoring_missing_runs() -> None:
    s = report.spread([100.0, 90.0, 110.0, None, math.nan])
    assert (s["median"], s["min"], s["max"]) == (100.0, 90.0, 110.0)
    assert s["spread"] == pytest.approx(0.2)
    assert math.isnan(report.spread([])["median"])
    assert math.isnan(report.ratio(10.0, math.nan))
    assert report.ratio(95.0, 100.0) == pytest.approx(0.95)


# -- open-loop schedules --------------------------------------------------------------------------


def test_poisson_schedule_is_seeded_sorted_bounded_and_at_the_rate() -> None:
    schedule = load.poisson_schedule(200.0, 30.0, seed=3)
    assert schedule == load.poisson_schedule(200.0, 30.0, seed=3)
    assert schedule != load.poisson_schedule(200.0, 30.0, seed=4)
    assert schedule == sorted(schedule)
    assert schedule[0] > 0 and schedule[-1] < 30.0
    assert len(schedule) / 30.0 == pytest.approx(200.0, rel=0.05)
    gaps = np.diff(schedule)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.1)  # exponential gaps: CV = 1
    assert load.poisson_schedule(0.0, 10.0) == []


# -- /metrics ------------------------------------------------------------------------------------

METRICS_BEFORE = """
# HELP inference_engine_batch_size Inputs per forward pass.
inference_engine_batch_size_bucket{le="1.0",model="m"} 10.0
inference_engine_batch_size_bucket{le="4.0",model="m"} 12.0
inference_engine_batch_size_bucket{le="+Inf",model="m"} 12.0
inference_engine_batch_size_sum{model="m"} 18.0
inference_engine_batch_size_count{model="m"} 12.0
inference_engine_batch_size_sum{model="other"} 999.0
inference_engine_queue_wait_seconds_sum{model="m"} 0.5
inference_engine_queue_wait_seconds_count{model="m"} 18.0
"""
METRICS_AFTER = """
inference_engine_batch_size_bucket{le="1.0",model="m"} 12.0
inference_engine_batch_size_bucket{le="4.0",model="m"} 22.0
inference_engine_batch_size_bucket{le="+Inf",model="m"} 22.0
inference_engine_batch_size_sum{model="m"} 60.0
inference_engine_batch_size_count{model="m"} 22.0
inference_engine_queue_wait_seconds_sum{model="m"} 1.5
inference_engine_queue_wait_seconds_count{model="m"} 60.0
"""


def test_window_metrics_are_differences_of_two_scrapes() -> None:
    before, after = parse_metrics(METRICS_BEFORE, "m"), parse_metrics(METRICS_AFTER, "m")
    assert before["batch_size_sum"] == 18.0  # the other model's series are not mixed in
    window = window_metrics(before, after)
    assert window["batches"] == 10
    assert window["avg_batch_size"] == pytest.approx(4.2)
    assert window["queue_wait_ms"] == pytest.approx(1000 * 1.0 / 42)
    assert window["batch_histogram"] == {"<=1": 2.0, "<=4": 8.0}
    assert window["inference_ms"] == 0.0  # no such series: zero, not an error


SHADOW_METRICS = """
inference_engine_batch_size_sum{model="m",version="1"} 30.0
inference_engine_batch_size_count{model="m",version="1"} 10.0
inference_engine_batch_size_sum{model="m",version="2"} 500.0
inference_engine_batch_size_count{model="m",version="2"} 20.0
inference_engine_shadow_requests_total{model="m",primary="1",shadow="2",outcome="compared"} 28.0
inference_engine_shadow_requests_total{model="m",primary="1",shadow="2",outcome="shed"} 2.0
inference_engine_shadow_requests_created{model="m",primary="1",shadow="2",outcome="shed"} 1.7e9
inference_engine_shadow_top1_agreements_total{model="m",primary="1",shadow="2"} 28.0
inference_engine_shadow_agreement_ratio{model="m",primary="1",shadow="2"} 1.0
inference_engine_shadow_score_difference_sum{model="m",primary="1",shadow="2"} 0.0
inference_engine_shadow_score_difference_count{model="m",primary="1",shadow="2"} 28.0
inference_engine_shadow_agreement_ratio{model="other",primary="1",shadow="2"} 0.5
"""


def test_a_shadow_workloads_window_reads_version_1_and_counts_copies_by_outcome() -> None:
    before = parse_metrics("", "m", "1")
    after = parse_metrics(SHADOW_METRICS, "m", "1")
    assert after["batch_size_sum"] == 30.0  # version 2's (the shadow's) batches are not mixed in
    window = window_metrics(before, after)
    assert window["avg_batch_size"] == pytest.approx(3.0)
    assert window["shadow"] == {"compared": 28.0, "failed": 0.0, "shed": 2.0}
    assert "shadow" not in window_metrics(before, parse_metrics(METRICS_AFTER, "m"))  # plain model
    assert shadow_counters(SHADOW_METRICS, "m") == {
        "1->2": {
            "compared": 28.0,
            "failed": 0.0,
            "shed": 2.0,
            "agreements": 28.0,
            "agreement_ratio": 1.0,
            "mean_score_difference": 0.0,
        }
    }


# -- workloads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_cnn", "efficientnet_lite0"])
def test_shadow_twins_run_when_named_at_their_twins_points(name: str) -> None:
    plain, shadowed = run.WORKLOADS[name], run.WORKLOADS[f"{name}@shadow"]
    assert f"{name}@shadow" not in run.DEFAULT_WORKLOADS and plain.name in run.DEFAULT_WORKLOADS
    assert shadowed.shadow and not plain.shadow and shadowed.twin == name and plain.twin == name
    assert (shadowed.model, shadowed.images, shadowed.protocol) == (plain.model, plain.images, plain.protocol)
    assert (shadowed.concurrency, shadowed.open_fractions) == (plain.concurrency, plain.open_fractions)
    assert shadowed.versions == (1, 2) and plain.versions == ()
    assert shadowed.overrides == SHADOW_OVERRIDES and plain.overrides == {}
    assert run.WORKLOADS[f"{name}@v2"].twin == name


@pytest.mark.parametrize("name", ["tiny_cnn", "efficientnet_lite0"])
def test_a_shadow_repository_is_two_identical_versions_the_loader_accepts(name: str, tmp_path: Path) -> None:
    from inference_engine.models.loader import scan_model
    from inference_engine.settings import BatchingSettings

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny_cnn.pt").write_bytes(b"not loaded here")  # a cached file: nothing is built
    workload = run.WORKLOADS[f"{name}@shadow"]
    repo = write_repository(
        model_specs()[name], cache, tmp_path / "repo", workload.overrides, workload.versions
    )
    folder = repo / name
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2", "model.yaml"]
    document = yaml.safe_load((folder / "model.yaml").read_text())
    assert "version" not in document  # a version's number is its folder's name
    assert {k: document[k] for k in SHADOW_OVERRIDES} == SHADOW_OVERRIDES
    specs, broken = scan_model(folder, BatchingSettings())
    assert not broken
    assert [spec.config.version for spec in specs] == ["1", "2"]
    assert specs[0].config.weights == specs[1].config.weights
    assert dict(specs[0].plan.traffic) == {"1": 1.0} and dict(specs[0].plan.shadow) == {"2": 1.0}


# -- the report ------------------------------------------------------------------------------------


def _window(level: float, rps: float, p50: float, p99: float, batch: float, wait: float) -> dict[str, Any]:
    return {
        "kind": "closed", "level": level, "duration_s": 4.0, "requests": int(rps * 4), "errors": 0,
        "throughput_rps": rps, "p50_ms": p50, "p95_ms": p99 * 0.9, "p99_ms": p99, "max_ms": p99 * 1.1,
        "mean_ms": p50, "loadgen_cpu_cores": 0.02, "loadgen_cpu_us_per_request": 40.0,
        "server_cpu_cores": 1.9, "avg_batch_size": batch, "queue_wait_ms": wait, "preprocess_ms": 3.0,
        "inference_ms": 20.0, "batches": 10, "batch_histogram": {},
    }  # fmt: skip


def fixture_results() -> dict[str, Any]:
    """A results document as bench.run writes it: one light model, two closed and one open point."""
    closed = [
        {"clients": 1, "runs": [_window(1, 40, 24.0, 30.0, 1.0, 0.1), _window(1, 42, 23.0, 29.0, 1.0, 0.1)]},
        {
            "clients": 32,
            "runs": [_window(32, 95, 330.0, 400.0, 3.9, 200), _window(32, 97, 320.0, 390.0, 3.95, 190)],
        },
    ]
    opened = [{"rate": 50.0, "runs": [{**_window(50, 50, 30.0, 60.0, 1.4, 2.0), "kind": "open"}]}]
    return {
        "meta": {
            "started": "2026-01-01T00:00:00+0000", "mode": "default", "duration_s": 60.0,
            "machine": {"cores": 2, "cpu_model": "Test CPU", "memory_gb": 8.0,
                        "load_average": [0.1, 0.2, 0.3]},
            "load_average_after": [0.4, 0.5, 0.6],
            "versions": {k: "1" for k in ("python", "torch", "onnxruntime", "numpy", "pillow", "uvicorn",
                                          "uvloop", "httptools")},
            "plan": {"repeats": 2, "duration_s": 4.0, "heavy_duration_s": 8.0, "warmup_s": 1.5},
            "load_generator": "test", "server": "test",
        },
        "workloads": [
            {
                "name": "efficientnet_lite0", "model": "efficientnet_lite0", "images": "photos640",
                "model_yaml": {"max_batch_size": 4, "max_batch_delay_ms": 5},
                "raw": {
                    "pass1": {"decode": {"decode_ms": 1.0, "decode_full_ms": 1.1, "preprocess_ms": 2.0,
                                         "total_ms": 3.0},
                              "forward_ips": {"1": 50.0, "4": 60.0}, "single_ms": 24.0},
                    "pass2": {"forward_ips": {"1": 50.0}, "pipeline": [{"ips": 102.0}]},
                    "best_pipeline": {"ips": 98.0, "threads": 2, "batch": 4, "workers": 2, "overrides": {}},
                },
                "served": {"cold_start_s": 2.0, "peak_rss_mb": 300.0, "closed": closed, "open": opened},
            }
        ],
    }  # fmt: skip


def test_summary_has_ratios_to_the_raw_ceiling_and_judges_the_targets() -> None:
    summary = report.summarise(fixture_results())["efficientnet_lite0"]
    assert summary["raw"]["pipeline_ips"]["median"] == pytest.approx(100.0)
    assert summary["ratios"][32] == pytest.approx(0.96)
    assert summary["closed"][32]["throughput_rps"]["spread"] == pytest.approx(2 / 96)
    targets = {t["target"]: t for t in summary["targets"]}
    assert targets["served/raw at 32 clients >= 0.9"]["met"]
    single = targets["1-client p50 <= raw forward(1) + decode + 2 ms"]
    assert single["limit"] == pytest.approx(1000 / 50 + 3.0 + 2.0)
    assert single["value"] == pytest.approx(23.5)  # the median of the two runs' p50
    assert single["met"]
    batch = targets["32 clients: avg batch >= 0.75 x max_batch_size"]
    assert batch["met"] and batch["limit"] == pytest.approx(3.0)


def _with_shadow_twin(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` plus an ``efficientnet_lite0@shadow`` at the same points: half the throughput at
    32 clients, 1-client latency 10% up, every request copied at 1 client, a third shed at 32."""
    plain = results["workloads"][0]
    closed = [
        {
            "clients": 1,
            "runs": [
                {**_window(1, 38, 26.0, 33.0, 1.0, 0.1), "shadow": {"compared": 152, "failed": 0, "shed": 0}},
                {**_window(1, 38, 25.0, 32.0, 1.0, 0.1), "shadow": {"compared": 152, "failed": 0, "shed": 0}},
            ],
        },
        {
            "clients": 32,
            "runs": [
                {
                    **_window(32, 48, 660.0, 800.0, 3.9, 400),
                    "shadow": {"compared": 128, "failed": 0, "shed": 64},
                },
                {
                    **_window(32, 48, 640.0, 780.0, 3.9, 380),
                    "shadow": {"compared": 128, "failed": 0, "shed": 64},
                },
            ],
        },
    ]
    opened = [
        {
            "rate": 50.0,
            "runs": [
                {
                    **_window(50, 47, 60.0, 180.0, 1.4, 2.0),
                    "kind": "open",
                    "shadow": {"compared": 160, "shed": 28},
                }
            ],
        }
    ]
    shadowed = {
        **plain,
        "name": "efficientnet_lite0@shadow",
        "shadow": True,
        "twin": "efficientnet_lite0",
        "versions": [1, 2],
        "served": {
            **plain["served"],
            "closed": closed,
            "open": opened,
            "shadow": {
                "1->2": {
                    "compared": 3000.0,
                    "failed": 0.0,
                    "shed": 400.0,
                    "agreements": 3000.0,
                    "agreement_ratio": 1.0,
                    "mean_score_difference": 0.0,
                }
            },
        },
    }
    return {**results, "workloads": [plain, shadowed]}


def test_a_shadow_twin_is_compared_with_its_plain_workload_at_the_same_points(tmp_path: Path) -> None:
    results = _with_shadow_twin(fixture_results())
    summary = report.summarise(results)
    shadowed = summary["efficientnet_lite0@shadow"]
    cost = shadowed["vs_twin"]
    assert cost["twin"] == "efficientnet_lite0" and "vs_twin" not in summary["efficientnet_lite0"]
    assert cost["closed"][32]["throughput_rps"] == pytest.approx(0.5)
    assert cost["closed"][1]["p50_ms"] == pytest.approx(25.5 / 23.5)
    assert cost["open"][50.0]["p99_ms"] == pytest.approx(3.0)
    assert shadowed["closed"][32]["shadow_compared_per_request"]["median"] == pytest.approx(128 / 192)
    assert shadowed["closed"][32]["shadow_shed_per_request"]["median"] == pytest.approx(64 / 192)
    assert "shadow_compared_per_request" not in summary["efficientnet_lite0"]["closed"][32]
    # Computing every request twice is the cost measured, not a missed target.
    assert "served/raw at 32 clients >= 0.9" not in {t["target"] for t in shadowed["targets"]}
    report.write(results, tmp_path, "results")
    text = (tmp_path / "results.md").read_text()
    assert text == report.markdown(report.load_results(tmp_path / "results.json"))
    assert "Shadow cost, efficientnet_lite0 → efficientnet_lite0@shadow" in text
    assert "| 32 | 96.0 → 48.0 | 0.50 |" in text
    assert "| 50.0 | 50.0 → 47.0 | 30.0 → 60.0 | 2.00 | 60.0 → 180 | 3.00 | 0 → 0 | 0.85 / 0.15 |" in text
    assert "1->2: 3000 copies compared, 400 shed, 0 failed, top-1 agreement ratio 1.0000" in text
    alone = report.markdown({**results, "workloads": results["workloads"][1:]})
    assert "efficientnet_lite0 was not measured in this run: no cost comparison." in alone


def test_markdown_and_files_render_from_saved_json(tmp_path: Path) -> None:
    results = fixture_results()
    written = report.write(results, tmp_path, "results")
    assert [p.name for p in written] == [
        "results.json",
        "results.md",
        "results-throughput.png",
        "results-latency.png",
    ]
    assert all(p.stat().st_size > 0 for p in written)
    again = report.load_results(tmp_path / "results.json")
    text = report.markdown(again)
    assert text == (tmp_path / "results.md").read_text()
    assert "| efficientnet_lite0 | 100.0 ±2% |" in text
    assert "| 32 | 96.0 ±1% | 0.96 |" in text
    assert "Test CPU" in text and "## Targets" in text
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["efficientnet_lite0"]["ratios"][
        "32"
    ]


# -- the load generator against a trivial server ---------------------------------------------------------


async def _tiny_server(status: int = 200) -> asyncio.Server:
    """Answers each request (Content-Length bodies only) with ``status``, keep-alive."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                await reader.readexactly(length)
                body = b'{"ok": true}'
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_closed_and_open_loops_count_answers_and_errors() -> None:
    server = await _tiny_server()
    port = server.sockets[0].getsockname()[1]
    requests = [load.build_request("/predict", b"x" * 100, port)]
    marks: list[str] = []

    async def mark() -> None:
        marks.append("edge")

    async with server:
        closed = await load.closed_loop(port, requests, 3, 0.05, 0.3, mark, mark)
        opened = await load.open_loop(port, requests, 100.0, 0.05, 0.3, seed=1)
        status, body = await load.fetch(port, "/metrics")
    result = closed.result()
    assert marks == ["edge", "edge"]
    assert (
        result["requests"] > 10
        and result["errors"] == 0
        and result["statuses"] == {"200": result["requests"]}
    )
    assert result["p50_ms"] > 0 and result["loadgen_cpu_us_per_request"] > 0
    assert opened.result()["requests"] == len(
        [t for t in load.poisson_schedule(100.0, 0.35, 1) if 0.05 <= t < 0.35]
    )
    assert status == 200 and body == b'{"ok": true}'


async def test_error_statuses_are_errors_not_latencies() -> None:
    server = await _tiny_server(503)
    port = server.sockets[0].getsockname()[1]
    async with server:
        window = await load.closed_loop(port, [load.build_request("/p", b"x", port)], 2, 0.0, 0.2)
    result = window.result()
    assert result["requests"] == 0 and result["errors"] > 0 and set(result["statuses"]) == {"503"}


def test_the_workers_workload_runs_two_server_processes_against_its_twins_ceiling() -> None:
    workload = run.WORKLOADS["tiny_cnn@workers2"]
    spec = model_specs()["tiny_cnn"]
    assert workload.twin == "tiny_cnn" and workload.model == "tiny_cnn"
    assert workload.server_env(spec) == {**spec.settings_env, "IE_SERVER__WORKERS": "2"}
    assert run.WORKLOADS["tiny_cnn"].server_env(spec) == spec.settings_env
    assert "tiny_cnn@workers2" in run.DEFAULT_WORKLOADS
