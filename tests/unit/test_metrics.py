"""Prometheus metrics: one registry per Metrics object, inference_engine_* names."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from inference_engine.metrics import Metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """The value of one sample in the rendered text, or None when absent."""
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def test_two_metrics_objects_do_not_collide() -> None:
    first = Metrics()
    second = Metrics()  # a shared global registry would raise "Duplicated timeseries" here

    assert first.registry is not second.registry
    first.requests.labels(model="m", version="1", route="predict", status="200", protocol="http").inc()

    assert (
        sample(
            first,
            "inference_engine_requests_total",
            model="m",
            version="1",
            route="predict",
            status="200",
            protocol="http",
        )
        == 1.0
    )
    assert (
        sample(
            second,
            "inference_engine_requests_total",
            model="m",
            version="1",
            route="predict",
            status="200",
            protocol="http",
        )
        is None
    )


def test_explicit_registry_is_used() -> None:
    registry = CollectorRegistry()

    metrics = Metrics(registry)
    metrics.queue_depth.labels(model="m", version="1").set(3)

    assert metrics.registry is registry
    assert registry.get_sample_value("inference_engine_queue_depth", {"model": "m", "version": "1"}) == 3.0


def test_render_after_observations() -> None:
    metrics = Metrics()

    metrics.build_info.labels(version="1.2.3").set(1)
    metrics.requests.labels(model="m", version="1", route="predict", status="200", protocol="http").inc(2)
    metrics.batch_size.labels(model="m", version="1").observe(5)
    metrics.batch_size.labels(model="m", version="1").observe(1)
    metrics.queue_depth.labels(model="m", version="1").set(7)
    metrics.request_duration.labels(model="m", version="1", route="predict", protocol="http").observe(0.03)
    metrics.errors.labels(model="m", version="1", type="queue_full").inc()
    text = metrics.render().decode()

    assert isinstance(metrics.render(), bytes)
    assert "# TYPE inference_engine_requests_total counter" in text
    assert (
        'inference_engine_requests_total{model="m",protocol="http",route="predict",status="200",'
        'version="1"} 2.0' in text
    )
    assert "# TYPE inference_engine_batch_size histogram" in text
    assert 'inference_engine_batch_size_bucket{le="1.0",model="m",version="1"} 1.0' in text
    assert 'inference_engine_batch_size_bucket{le="4.0",model="m",version="1"} 1.0' in text
    assert 'inference_engine_batch_size_bucket{le="6.0",model="m",version="1"} 2.0' in text
    assert 'inference_engine_batch_size_bucket{le="+Inf",model="m",version="1"} 2.0' in text
    assert 'inference_engine_batch_size_count{model="m",version="1"} 2.0' in text
    assert 'inference_engine_batch_size_sum{model="m",version="1"} 6.0' in text
    assert "# TYPE inference_engine_queue_depth gauge" in text
    assert 'inference_engine_queue_depth{model="m",version="1"} 7.0' in text
    assert 'inference_engine_build_info{version="1.2.3"} 1.0' in text
    assert 'inference_engine_errors_total{model="m",type="queue_full",version="1"} 1.0' in text
    assert (
        sample(
            metrics,
            "inference_engine_request_duration_seconds_count",
            model="m",
            version="1",
            route="predict",
            protocol="http",
        )
        == 1.0
    )


# Prometheus' standard process and platform collectors keep their conventional names.
STANDARD = ("process_", "python_info", "python_gc_")


def test_every_metric_name_has_the_prefix() -> None:
    metrics = Metrics()

    names = {family.name for family in metrics.registry.collect()}

    assert len(names) >= 15
    assert all(name.startswith(("inference_engine_", *STANDARD)) for name in names)
    for line in metrics.render().decode().splitlines():
        match = re.match(r"# (?:HELP|TYPE) (\S+)", line)
        if match:
            assert match.group(1).startswith(("inference_engine_", *STANDARD))


def test_the_process_is_observable() -> None:
    text = Metrics().render().decode()
    for name in ("process_resident_memory_bytes", "process_open_fds", "inference_engine_threads"):
        assert re.search(rf"^{name} [0-9.e+]+$", text, re.MULTILINE), name
    assert float(re.findall(r"^inference_engine_threads (\S+)$", text, re.MULTILINE)[0]) >= 1


@pytest.mark.parametrize(
    ("bucket", "expected"),
    [("1.0", 0.0), ("8.0", 1.0), ("12.0", 1.0), ("256.0", 2.0), ("+Inf", 3.0)],
)
def test_batch_size_buckets(bucket: str, expected: float) -> None:
    metrics = Metrics()
    for size in (8, 200, 1000):
        metrics.batch_size.labels(model="m", version="1").observe(size)

    assert (
        sample(metrics, "inference_engine_batch_size_bucket", model="m", version="1", le=bucket) == expected
    )


def test_model_ready_set_and_unset() -> None:
    metrics = Metrics()
    ready = metrics.model_ready.labels(model="m", version="1")

    ready.set(1)
    assert sample(metrics, "inference_engine_model_ready", model="m", version="1") == 1.0
    ready.set(0)
    assert sample(metrics, "inference_engine_model_ready", model="m", version="1") == 0.0
    metrics.model_ready.remove("m", "1")
    assert sample(metrics, "inference_engine_model_ready", model="m", version="1") is None


def test_gauge_up_and_down() -> None:
    metrics = Metrics()
    in_flight = metrics.in_flight.labels(model="m", version="1")

    in_flight.inc()
    in_flight.inc()
    in_flight.dec()

    assert sample(metrics, "inference_engine_in_flight_requests", model="m", version="1") == 1.0


def test_unobserved_labelled_metrics_have_no_samples() -> None:
    metrics = Metrics()

    assert sample(metrics, "inference_engine_queue_depth", model="m", version="1") is None
    assert "inference_engine_queue_depth{" not in metrics.render().decode()
