"""Prometheus metrics on the server's own registry.

A :class:`Metrics` object is built at start-up and passed to whoever records; nothing is
registered at import time, so two servers (or two tests) in one process never collide.

With ``server.workers`` above 1 every worker process records into files in a folder the
supervisor made (prometheus_client's multiprocess mode, chosen by ``PROMETHEUS_MULTIPROC_DIR``
before the worker imports it), and whichever worker answers a scrape renders all of them:
counters and histograms summed, each gauge by the rule its meaning asks (a queue depth summed,
a model ready only if it is in every worker, per-process figures labelled with their ``pid``).
"""

from __future__ import annotations

import asyncio
import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

PREFIX = "inference_engine"

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    """Every metric the server exports, named ``inference_engine_*``."""

    def __init__(self, registry: CollectorRegistry | None = None, shared_dir: str | None = None) -> None:
        """``shared_dir``: the multiprocess folder (``PROMETHEUS_MULTIPROC_DIR``) when this is one
        of several worker processes; scrapes then render every worker's files."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self.shared_dir = shared_dir
        #: Collectors of this process only, rendered beside the shared files (GPU readings).
        self.live_registry = self.registry if shared_dir is None else CollectorRegistry()
        r = self.registry
        self.build_info = Gauge(
            f"{PREFIX}_build_info", "Server version.", ["version"], registry=r, multiprocess_mode="max"
        )
        # The process' own: resident memory, open descriptors, CPU, start time (process_*),
        # Python's version and garbage collector (python_*), and what a leak shows first,
        # threads and asyncio tasks (the soak test watches them).
        # Not in multiprocess mode: they would show whichever worker answered the scrape.
        if shared_dir is None:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.threads = Gauge(
            f"{PREFIX}_threads", "Threads in the server process.", registry=r, multiprocess_mode="liveall"
        )
        self.asyncio_tasks = Gauge(
            f"{PREFIX}_asyncio_tasks",
            "Tasks on the event loop (read when /metrics is scraped).",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered (protocol: http or grpc; route: the HTTP route or the gRPC method; "
            "status: the HTTP status, or for gRPC the HTTP status of the same outcome over REST).",
            ["model", "version", "route", "status", "protocol"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request arrival to response, per route.",
            ["model", "version", "route", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_duration = Histogram(
            f"{PREFIX}_preprocess_duration_seconds",
            "Decode and pre-processing time of one input in the worker pool.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time an input waited in the model queue before its forward pass started.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            f"{PREFIX}_inference_duration_seconds",
            "Duration of one batched forward pass.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Inputs per forward pass.",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth",
            "Inputs waiting in the model queue.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batch_delay = Gauge(
            f"{PREFIX}_batch_delay_seconds",
            "How long a forming batch with nothing queued behind it waits for one more input: "
            "max_batch_delay_ms when fixed, the measured choice when adaptive.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.in_flight = Gauge(
            f"{PREFIX}_in_flight_requests",
            "Inference requests being handled.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.errors = Counter(
            f"{PREFIX}_errors",
            "Errors answered to clients, by type.",
            ["model", "version", "type"],
            registry=r,
        )
        self.dropped = Counter(
            f"{PREFIX}_dropped_inputs",
            "Queued inputs dropped before their forward pass (deadline passed, client gone).",
            ["model", "version", "reason"],
            registry=r,
        )
        self.admission_refusals = Counter(
            f"{PREFIX}_admission_refusals",
            "Inputs refused before queueing: queue full, or (predictive admission) a deadline the "
            "work ahead would not let them meet.",
            ["model", "version", "reason"],
            registry=r,
        )
        self.admission_prediction_error = Histogram(
            f"{PREFIX}_admission_prediction_error_seconds",
            "How far predictive admission's answer-time prediction was off, per admitted input.",
            ["model", "version"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.admission_predictions = Counter(
            f"{PREFIX}_admission_predictions",
            "Admitted inputs by whether they were answered before (early) or after (late) the "
            "time predictive admission predicted.",
            ["model", "version", "outcome"],
            registry=r,
        )
        self.cache_lookups = Counter(
            f"{PREFIX}_cache_lookups",
            "Output cache lookups by pre-processed pixels, by result (hit or miss).",
            ["model", "version", "result"],
            registry=r,
        )
        self.cache_bytes = Gauge(
            f"{PREFIX}_cache_bytes",
            "Bytes of model outputs held in the output cache.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_entries = Gauge(
            f"{PREFIX}_cache_entries",
            "Outputs held in the output cache.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_evictions = Counter(
            f"{PREFIX}_cache_evictions",
            "Outputs evicted from the output cache to stay within its byte bound.",
            ["model", "version"],
            registry=r,
        )
        self.merged_inputs = Counter(
            f"{PREFIX}_merged_inputs",
            "Inputs that shared the forward pass of an identical input already queued or running.",
            ["model", "version"],
            registry=r,
        )
        self.model_ready = Gauge(
            f"{PREFIX}_model_ready",
            "1 when the model is loaded and its batch loop runs.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.model_load_seconds = Gauge(
            f"{PREFIX}_model_load_seconds",
            "Time to load the model.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_warmup_seconds = Gauge(
            f"{PREFIX}_model_warmup_seconds",
            "Time to warm the model up.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_load_failures = Counter(
            f"{PREFIX}_model_load_failures", "Failed model loads.", ["model", "version"], registry=r
        )
        self.batch_failures = Counter(
            f"{PREFIX}_batch_failures",
            "Forward passes that raised for the whole batch.",
            ["model", "version"],
            registry=r,
        )

        self.watchdog_restarts = Counter(
            f"{PREFIX}_watchdog_restarts",
            "Models restarted by the watchdog (reason: hung forward pass, or batch loop died).",
            ["model", "version", "reason"],
            registry=r,
        )
        self.failed_recoveries = Gauge(
            f"{PREFIX}_model_failed_recoveries",
            "Reloads of a model that failed in a row since it last served (0 once one succeeds); "
            "past watchdog.max_failed_recoveries the liveness probe fails.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.label_cache_lookups = Counter(
            f"{PREFIX}_label_cache_lookups",
            "Zero-shot label embeddings looked up in the model's cache (result: hit or miss).",
            ["model", "version", "result"],
            registry=r,
        )

        self.traffic_weight = Gauge(
            f"{PREFIX}_traffic_weight",
            "Share (0..1) of the model's requests that name no version sent to this version.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        pair = ["model", "primary", "shadow"]
        self.shadow_requests = Counter(
            f"{PREFIX}_shadow_requests",
            "Requests copied to a shadow version (outcome: compared, failed, shed).",
            [*pair, "outcome"],
            registry=r,
        )
        self.shadow_agreements = Counter(
            f"{PREFIX}_shadow_top1_agreements",
            "Shadow comparisons that agreed: the same top-1 class, or embeddings with cosine >= 0.99.",
            pair,
            registry=r,
        )
        self.shadow_agreement_ratio = Gauge(
            f"{PREFIX}_shadow_agreement_ratio",
            "Agreements over comparisons between a primary version and its shadow since the model's "
            "last load.",
            pair,
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.shadow_score_difference = Histogram(
            f"{PREFIX}_shadow_score_difference",
            "|p_primary - p_shadow| for the primary's top-1 class, per compared input.",
            pair,
            buckets=(0.0001, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
            registry=r,
        )
        self.shadow_cosine = Histogram(
            f"{PREFIX}_shadow_cosine_similarity",
            "Cosine similarity of primary and shadow embeddings, per compared input.",
            pair,
            buckets=(0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0),
            registry=r,
        )
        self.repository_operations = Counter(
            f"{PREFIX}_repository_operations",
            "Model control operations (operation: load, unload; outcome: ok, failed).",
            ["model", "operation", "outcome"],
            registry=r,
        )
        self.rate_limit_store_up = Gauge(
            f"{PREFIX}_rate_limit_store_up",
            "1 while the shared rate-limit store answers, 0 while requests go unchecked (backend).",
            ["backend"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.rate_limit_unchecked = Counter(
            f"{PREFIX}_rate_limit_unchecked",
            "Requests decided without the rate-limit store (action: allowed = fail open, refused = closed).",
            ["action"],
            registry=r,
        )

    def render(self) -> bytes:
        """The registry in Prometheus text format (every worker's, in multiprocess mode)."""
        self.threads.set(threading.active_count())
        self.asyncio_tasks.set(_asyncio_tasks())
        if self.shared_dir is None:
            return generate_latest(self.registry)
        shared = CollectorRegistry()
        MultiProcessCollector(shared, path=self.shared_dir)  # type: ignore[no-untyped-call]
        return generate_latest(shared) + generate_latest(self.live_registry)


def _asyncio_tasks() -> float:
    """Tasks of the running loop; 0 outside one (a scrape off the loop thread has none to see)."""
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:
        return 0.0
