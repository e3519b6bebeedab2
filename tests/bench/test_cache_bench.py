"""The output-cache workload's and the overhead lever's pieces: the Zipf mix of distinct photos,
the striped distinct JPEGs, disjoint client streams, the cache and admission counters read from
``/metrics``, the report's "Output cache" and "Admission predictions" sections, and the paced
model's folder.

No benchmark runs here; the load generator runs against a trivial asyncio HTTP server on loopback
for well under a second.
"""

from __future__ import annotations

import asyncio
import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from bench.server import admission_totals, parse_metrics, window_metrics
from bench.workloads import (
    CACHE_OVERRIDES,
    STRIPES_COUNT,
    VARIANT_COUNT,
    StripedRequests,
    image_set,
    model_specs,
    striped_jpeg,
    write_repository,
    zipf_expected_hit_ratio,
    zipf_sequence,
)
from PIL import Image

from bench import levers, load, report, run


def _digests(images: list[bytes], model: str) -> set[bytes]:
    """Each image's output-cache key as the server computes it for ``model``: a hash of the
    pre-processed pixels, decoded at the model's size."""
    from inference_engine.imaging import ImageLimits, decode_image
    from inference_engine.models.base import PreprocessingConfig
    from inference_engine.models.transforms import to_chw_array
    from inference_engine.reuse import pixel_digest

    config = PreprocessingConfig(**model_specs()[model].config.get("preprocessing", {}))
    keys = set()
    for data in images:
        digest = pixel_digest(to_chw_array(decode_image(data, ImageLimits(), min_side=config.resize), config))
        assert digest is not None
        keys.add(digest)
    return keys


# -- the Zipf mix ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variants() -> tuple[bytes, ...]:
    return image_set("variants500")


def test_the_mix_has_500_distinct_photos_for_every_model_that_runs_it(variants: tuple[bytes, ...]) -> None:
    assert len(variants) == VARIANT_COUNT == 500 and len(set(variants)) == 500
    with Image.open(io.BytesIO(variants[17])) as image:
        assert image.size == (640, 480) and image.format == "JPEG"
    for workload in run.CACHE_WORKLOADS:  # no two share a cache key after the model's pre-processing
        assert len(_digests(list(variants), workload.model)) == 500


def test_zipf_sequence_is_seeded_in_range_and_follows_the_rank_law() -> None:
    sequence = zipf_sequence(500)
    assert sequence == zipf_sequence(500) and sequence != zipf_sequence(500, seed=1)
    assert len(sequence) == 1 << 17 and min(sequence) >= 0 and max(sequence) < 500
    counts = [n for _, n in Counter(sequence).most_common()]
    # Rank 1 over rank 2 and over rank 10: 2**1.1 = 2.14 and 10**1.1 = 12.6, within sampling noise.
    assert counts[0] / counts[1] == pytest.approx(2**1.1, rel=0.15)
    assert counts[0] / counts[9] == pytest.approx(10**1.1, rel=0.2)
    assert zipf_expected_hit_ratio([1, 1, 2, 1]) == pytest.approx(0.5)
    assert math.isnan(zipf_expected_hit_ratio([]))


def test_cache_workloads_run_by_default_and_in_quick_mode_after_the_others() -> None:
    names = [w.name for w in run.CACHE_WORKLOADS]
    assert names == ["tiny_cnn@cache", "efficientnet_lite0@cache"]
    assert set(names) <= set(run.DEFAULT_WORKLOADS) and "tiny_cnn@cache" in run.QUICK_WORKLOADS
    for workload in run.CACHE_WORKLOADS:
        assert workload.cache and workload.comparison and not workload.transports
        assert workload.twin == workload.model and workload.images == "variants500"
        assert workload.concurrency == (8, 32) and workload.overrides == {}
    # The workloads measured before keep their place, points and settings.
    plain = [w.name for w in run.NATIVE_WORKLOADS] + [w.name for w in run.TRANSPORT_WORKLOADS]
    assert list(run.DEFAULT_WORKLOADS[: len(plain)]) == plain
    assert run.WORKLOADS["efficientnet_lite0_onnx@12mp"].twin == "efficientnet_lite0_onnx@12mp"
    assert run.CACHE_VARIANTS == {"off": {}, "on": CACHE_OVERRIDES}
    assert CACHE_OVERRIDES == {"cache": {"enabled": True, "merge_in_flight": True}}


def test_a_point_continues_the_mix_where_the_last_left_off() -> None:
    rotated = run.Rotated([b"a", b"b", b"c", b"d"], 3)
    assert len(rotated) == 4 and [rotated[i] for i in range(5)] == [b"d", b"a", b"b", b"c", b"d"]
    assert rotated[1:3] == [b"a", b"b"]


# -- distinct images on demand ---------------------------------------------------------------------


def test_striped_jpegs_are_distinct_photos_sized_images_for_every_model() -> None:
    indices = [*range(300), 8**3 - 1, 8**3, 8**6 + 5, STRIPES_COUNT - 1]
    images = [striped_jpeg(i) for i in indices]
    with Image.open(io.BytesIO(images[0])) as image:
        image.load()
        assert image.size == (640, 480)
    size = sum(map(len, image_set("photos640"))) / 8
    assert all(0.7 * size < len(data) < 1.3 * size for data in images)  # the decoding cost of a photo
    for model in ("tiny_cnn", "efficientnet_lite0"):
        assert len(_digests(images, model)) == len(indices)
    with pytest.raises(IndexError):
        striped_jpeg(STRIPES_COUNT)


def test_striped_requests_are_built_on_demand_as_build_request_would() -> None:
    requests = StripedRequests("/predict", 8000, first=10, headers={"X-API-Key": "k"})
    assert len(requests) == STRIPES_COUNT - 10
    assert requests[3] == load.build_request("/predict", striped_jpeg(13), 8000, headers={"X-API-Key": "k"})
    assert requests[0:2] == [requests[0], requests[1]]


def test_the_overhead_lever_sends_every_point_distinct_images_to_both_variants() -> None:
    lever = levers.SERVED["reuse_admission_overhead"]
    assert lever.model == "tiny_cnn" and lever.levels == (1, 8, 32) and lever.images == levers.STRIPES
    off, on = lever.variants
    assert off.overrides == {"admission": "queue_only"}
    assert on.overrides == {"admission": "predictive", "cache": {"enabled": True, "merge_in_flight": True}}
    first, second = (levers.lever_requests(lever, "/predict", 8000, point) for point in (0, 1))
    assert isinstance(first, StripedRequests) and second.first - first.first == levers.STRIPES_PER_POINT
    assert levers.STRIPES_PER_POINT * 3 <= STRIPES_COUNT
    plain = levers.lever_requests(levers.SERVED["logging"], "/predict", 8000, 2)
    assert plain == [load.build_request("/predict", data, 8000) for data in image_set("photos640")]


def test_the_lever_table_notes_cache_hits_where_the_cache_was_on() -> None:
    point = {k: 1.0 for k in ("throughput_rps", "p50_ms", "p99_ms", "avg_batch_size", "server_cpu_cores")}
    results = {
        "reuse_admission_overhead": {
            "question": "q",
            "kind": "served",
            "variants": {
                "all off": {"1": {**point, "runs": [1.0]}},
                "all on": {"1": {**point, "runs": [1.0], "cache_lookups": 40, "cache_hits": 0}},
            },
        }
    }
    assert "Output cache over the measured windows: all on: 0 hits in 40 lookups." in levers.markdown(results)
    assert levers._cache_counts([{"cache": {"hits": 1.0, "misses": 9.0}}, {}]) == {
        "cache_lookups": 10.0,
        "cache_hits": 1.0,
    }
    assert levers._cache_counts([{}]) == {}


async def _echo_server(seen: list[bytes]) -> asyncio.Server:
    """Records each request's body (Content-Length bodies only) and answers 200, keep-alive."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                seen.append(await reader.readexactly(length))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_disjoint_clients_never_send_the_same_request() -> None:
    seen: list[bytes] = []
    server = await _echo_server(seen)
    port = server.sockets[0].getsockname()[1]
    requests = [load.build_request("/p", str(i).encode(), port) for i in range(100_000)]
    async with server:
        await load.closed_loop(port, requests, 4, 0.0, 0.2, disjoint=True)
        distinct = len(seen)
        assert distinct > 20 and len(set(seen)) == distinct
        await load.closed_loop(port, requests, 4, 0.0, 0.2)  # the clients a step apart: repeats
    assert len(set(seen[distinct:])) < len(seen) - distinct


# -- /metrics ----------------------------------------------------------------------------------------

CACHE_METRICS = """
inference_engine_batch_size_sum{model="m",version="1"} 10.0
inference_engine_batch_size_count{model="m",version="1"} 5.0
inference_engine_cache_lookups_total{model="m",result="hit",version="1"} {hits}
inference_engine_cache_lookups_total{model="m",result="miss",version="1"} {misses}
inference_engine_cache_lookups_created{model="m",result="miss",version="1"} 1.7e9
inference_engine_merged_inputs_total{model="m",version="1"} {merged}
inference_engine_admission_prediction_error_seconds_bucket{le="0.01",model="m",version="1"} 2.0
inference_engine_admission_prediction_error_seconds_sum{model="m",version="1"} {error}
inference_engine_admission_prediction_error_seconds_count{model="m",version="1"} {scored}
inference_engine_admission_predictions_total{model="m",outcome="early",version="1"} {early}
inference_engine_admission_predictions_total{model="m",outcome="late",version="1"} {late}
inference_engine_admission_refusals_total{model="m",reason="deadline",version="1"} {refused}
inference_engine_admission_refusals_total{model="m",reason="queue_full",version="1"} 0.0
inference_engine_cache_lookups_total{model="other",result="hit",version="1"} 999.0
"""


def _metrics(**values: float) -> str:
    text = CACHE_METRICS
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def test_a_window_reads_cache_hits_merges_and_admission_figures() -> None:
    before = parse_metrics(
        _metrics(hits=10, misses=10, merged=0, error=0.1, scored=20, early=5, late=15, refused=0), "m"
    )
    after = parse_metrics(
        _metrics(hits=40, misses=20, merged=5, error=0.5, scored=40, early=10, late=30, refused=3), "m"
    )
    window = window_metrics(before, after)
    assert window["cache"] == {
        "hits": 30.0,
        "misses": 10.0,
        "merged": 5.0,
        "hit_ratio": pytest.approx(0.75),
        "merged_share": pytest.approx(0.125),
    }
    admission = window["admission"]
    assert admission["predictions"] == 20 and admission["mean_error_ms"] == pytest.approx(20.0)
    assert admission["late_share"] == pytest.approx(0.75)
    assert admission["refused"] == {"deadline": 3.0, "queue_full": 0.0}
    # A server without the cache has no cache series: no cache figures, not zeros.
    every = _metrics(hits=1, misses=1, merged=0, error=0, scored=0, early=0, late=0, refused=0)
    plain = "\n".join(line for line in every.splitlines() if "cache" not in line and "merged" not in line)
    assert "cache" not in window_metrics(parse_metrics(plain, "m"), parse_metrics(plain, "m"))
    totals = admission_totals(
        _metrics(hits=0, misses=0, merged=0, error=0.4, scored=40, early=10, late=30, refused=2), "m"
    )
    assert totals["mean_error_ms"] == pytest.approx(10.0) and totals["refused"]["deadline"] == 2.0
    empty = admission_totals("", "m")
    assert (
        empty["predictions"] == 0 and math.isnan(empty["mean_error_ms"]) and math.isnan(empty["late_share"])
    )


# -- the report --------------------------------------------------------------------------------------


def _point(rps: float, p50: float, p99: float, cache: dict[str, float] | None = None) -> dict[str, Any]:
    window = {
        "kind": "closed", "level": 8, "duration_s": 4.0, "requests": int(rps * 4), "errors": 0,
        "throughput_rps": rps, "p50_ms": p50, "p95_ms": p99, "p99_ms": p99, "max_ms": p99, "mean_ms": p50,
        "loadgen_cpu_cores": 0.02, "loadgen_cpu_us_per_request": 40.0, "server_cpu_cores": 1.9,
        "avg_batch_size": 4.0, "queue_wait_ms": 1.0, "preprocess_ms": 1.0, "inference_ms": 1.0,
    }  # fmt: skip
    return window | ({"cache": cache} if cache else {})


def _admission(scored: float, error_ms: float, late: float) -> dict[str, Any]:
    return {
        "predictions": scored,
        "mean_error_ms": error_ms,
        "late_share": late,
        "refused": {"deadline": 0.0, "queue_full": 0.0},
    }


def with_cache(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with a ``tiny_cnn@cache`` comparison at 8 and 32 clients, the cache on serving
    twice the req/s at 8 clients and half the p50."""
    hit = {"hits": 90.0, "misses": 10.0, "merged": 2.0, "hit_ratio": 0.9, "merged_share": 0.02}
    points = [
        {"clients": 8, "variant": "off", "runs": [_point(400, 20, 40), _point(420, 22, 44)]},
        {"clients": 8, "variant": "on", "runs": [_point(820, 10, 30, hit), _point(820, 11, 31, hit)]},
        {"clients": 32, "variant": "off", "runs": [_point(500, 60, 90)]},
        {"clients": 32, "variant": "on", "runs": [_point(750, 40, 90, hit)]},
    ]
    entry = {
        "name": "tiny_cnn@cache",
        "model": "tiny_cnn",
        "images": "variants500",
        "served": {
            "mix": {
                "images": "variants500", "distinct": 500, "zipf_s": 1.1, "seed": 0, "length": 131072,
                "stride": 16384, "unbounded_hit_ratio": 0.9962,
            },
            "clients": [8, 32],
            "cold_start_s": {"off": 2.0, "on": 2.1},
            "peak_rss_mb": {"off": 300.0, "on": 310.0},
            "admission": {"off": _admission(5000, 3.0, 0.7), "on": _admission(500, 2.5, 0.5)},
            "points": points,
        },
    }  # fmt: skip
    workloads = [
        {**w, "served": {**w["served"], "admission": _admission(4000, 1.25, 0.62)}}
        for w in results["workloads"]
    ]
    return {**results, "workloads": workloads, "cache": [entry]}


def test_the_report_shows_the_cache_comparison_and_every_servers_predictions(tmp_path: Path) -> None:
    from tests.bench.test_bench import fixture_results

    results = with_cache(fixture_results())
    summary = report.summarise_cache(results["cache"][0])
    assert summary["ratios"][8]["throughput_rps"] == pytest.approx(820 / 410)
    assert summary["ratios"][32]["p50_ms"] == pytest.approx(40 / 60)
    assert summary["points"][8]["on"]["hit_ratio"]["median"] == pytest.approx(0.9)
    assert math.isnan(summary["points"][8]["off"]["hit_ratio"]["median"])
    written = report.write(results, tmp_path, "results")
    assert [p.name for p in written][:2] == ["results.json", "results.md"]
    text = (tmp_path / "results.md").read_text()
    assert text == report.markdown(report.load_results(tmp_path / "results.json"))
    assert "## Output cache on a Zipf mix" in text and "would hit 99.6% of the whole mix" in text
    assert (
        "| 8 | 410.0 ±2% | 820.0 ±0% | 2.00 | 21.0 → 10.5 | 0.50 | 42.0 → 30.5 | 0.73 "
        "| 0.900 | 0.020 | 0 / 0 |" in text
    )
    assert "## Admission predictions" in text
    assert "| efficientnet_lite0 | 4000 | 1.25 | 62% | 0 / 0 |" in text
    assert "| tiny_cnn@cache (cache on) | 500 | 2.50 | 50% | 0 / 0 |" in text
    saved = (tmp_path / "results.json").read_text()
    assert '"cache_summary"' in saved and '"tiny_cnn@cache"' in saved
    # A run without the new figures renders as before: no new sections.
    plain = report.markdown(fixture_results())
    assert "Output cache" not in plain and "Admission predictions" not in plain


# -- the paced model ---------------------------------------------------------------------------------


def test_the_paced_models_folder_has_its_handler_and_the_loader_accepts_it(tmp_path: Path) -> None:
    from inference_engine.models.loader import scan_model
    from inference_engine.settings import BatchingSettings

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny_cnn.pt").write_bytes(b"not loaded here")
    repo = write_repository(model_specs()["tiny_cnn_paced"], cache, tmp_path / "repo")
    folder = repo / "tiny_cnn_paced"
    assert sorted(p.name for p in folder.iterdir()) == ["model.py", "model.yaml"]
    document = yaml.safe_load((folder / "model.yaml").read_text())
    assert document["handler"] == "model.py:PacedTinyCNN" and document["weights"] == str(
        cache / "tiny_cnn.pt"
    )
    specs, broken = scan_model(folder, BatchingSettings())
    assert not broken and specs[0].handler_class.__name__ == "PacedTinyCNN"


def test_the_paced_handler_pads_a_pass_to_its_configured_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import time
    import types

    import numpy as np
    from bench.paced_model import PacedTinyCNN

    from inference_engine.models.classifier import TorchScriptClassifier

    monkeypatch.setattr(TorchScriptClassifier, "predict", lambda self, items: [np.zeros(4) for _ in items])
    handler = PacedTinyCNN.__new__(PacedTinyCNN)
    handler.config = types.SimpleNamespace(options={"pass_fixed_ms": 5.0, "pass_per_item_ms": 10.0})
    started = time.perf_counter()
    outputs = handler.predict([np.zeros(3)] * 2)
    assert time.perf_counter() - started >= 0.025 and len(outputs) == 2
