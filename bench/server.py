"""The real server as a child process on loopback, and what it costs while it serves.

:class:`ServedModel` starts ``python -m inference_engine serve`` on a free port (and its gRPC
listener on another, so that no run collides with a server on the default 8001) with a
one-model repository, waits for ``/ready``, samples the process's resident memory in a
background thread (peak RSS) and reads its CPU time at window edges (CPU cores used).
:func:`parse_metrics` turns ``/metrics`` text into sums and counts, so the achieved batch
sizes and the server-side time split (pre-processing, queue wait, forward pass) of a window are
differences of two scrapes. For a model with shadow versions, :func:`parse_metrics` reads one
version's series and the copies by outcome, and :func:`shadow_counters` the version pairs'
totals and agreement. It also reads the output cache's lookups and merged inputs and predictive
admission's record (predictions scored, their error, refusals), so a window gets ``cache`` and
``admission`` figures (:func:`cache_figures`, :func:`admission_figures`) and a whole run
:func:`admission_totals`; :func:`wait_idle` waits for a model's queue to empty between windows.
``ServedModel(args=("--config", FILE))`` adds a settings layer (auth, tenants).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from bench.load import fetch

ROOT = Path(__file__).resolve().parents[1]

#: Histogram series read from ``/metrics`` (``_sum`` and ``_count`` of each).
SERIES = {
    "batch_size": "inference_engine_batch_size",
    "preprocess_s": "inference_engine_preprocess_duration_seconds",
    "queue_wait_s": "inference_engine_queue_wait_seconds",
    "inference_s": "inference_engine_inference_duration_seconds",
    # |answered - predicted| of each input predictive admission admitted
    "admission_error_s": "inference_engine_admission_prediction_error_seconds",
}
#: Counters read by one label, as ``{prefix}{label value}`` keys: output-cache lookups
#: (``cache_hit``, ``cache_miss``), inputs merged into an identical one in flight (``merged``),
#: admitted inputs answered before or after their predicted time (``predicted_early``,
#: ``predicted_late``) and inputs refused before queueing (``refused_deadline``,
#: ``refused_queue_full``).
COUNTERS = {
    "inference_engine_cache_lookups_total": ("cache_", "result"),
    "inference_engine_merged_inputs_total": ("merged", ""),
    "inference_engine_admission_predictions_total": ("predicted_", "outcome"),
    "inference_engine_admission_refusals_total": ("refused_", "reason"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Shadow traffic series (:mod:`inference_engine.shadow`), labelled by version pair.
SHADOW_REQUESTS = "inference_engine_shadow_requests_total"  # outcome: compared, failed, shed
SHADOW_AGREEMENTS = "inference_engine_shadow_top1_agreements_total"
SHADOW_AGREEMENT_RATIO = "inference_engine_shadow_agreement_ratio"
SHADOW_SCORE_DIFFERENCE = "inference_engine_shadow_score_difference"
SHADOW_OUTCOMES = ("compared", "failed", "shed")

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _labels(text: str) -> dict[str, str]:
    return dict(_LABEL.findall(text))


def parse_metrics(text: str, model: str, version: str | None = None) -> dict[str, float]:
    """``{series}_sum`` / ``{series}_count`` for ``model`` and batch-size histogram buckets ``le_N``.

    ``version``: only that version's series (a model serving several versions has a series for
    each; without it, the last one listed wins). A model with shadow traffic also gets
    ``shadow_{outcome}`` (copies compared, failed or shed, all version pairs together).
    """
    values: dict[str, float] = {}
    wanted = f'model="{model}"'
    for line in text.splitlines():
        if line.startswith("#") or wanted not in line:
            continue
        name, _, rest = line.partition("{")
        labels, _, value = rest.rpartition("} ")
        if name == SHADOW_REQUESTS:
            key = "shadow_" + _labels(labels).get("outcome", "")
            values[key] = values.get(key, 0.0) + float(value)
            continue
        if version is not None and f'version="{version}"' not in labels:
            continue
        if name in COUNTERS:
            prefix, label = COUNTERS[name]
            key = prefix + (_labels(labels).get(label, "") if label else "")
            values[key] = values.get(key, 0.0) + float(value)
            continue
        for key, series in SERIES.items():
            if name in (series + "_sum", series + "_count"):
                values[key + name[len(series) :]] = float(value)
        if name == SERIES["batch_size"] + "_bucket":
            bound = labels.split('le="', 1)[1].split('"', 1)[0]
            values["batch_le_" + bound] = float(value)
    return values


def window_metrics(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, Any]:
    """What the server did between two scrapes: mean batch size, batches, mean time per stage."""
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    batches = delta.get("batch_size_count", 0.0)
    out: dict[str, Any] = {
        "batches": batches,
        "avg_batch_size": delta.get("batch_size_sum", 0.0) / batches if batches else 0.0,
    }
    for key in ("preprocess_s", "queue_wait_s", "inference_s"):
        count = delta.get(key + "_count", 0.0)
        out[key.replace("_s", "_ms")] = 1000 * delta.get(key + "_sum", 0.0) / count if count else 0.0
    buckets = sorted(
        ((float(k[len("batch_le_") :]), v) for k, v in delta.items() if k.startswith("batch_le_")),
        key=lambda kv: kv[0],
    )
    out["batch_histogram"] = {
        f"<={bound:g}": count - previous
        for (bound, count), previous in zip(buckets, [0.0] + [c for _, c in buckets], strict=False)
        if count - previous > 0
    }
    if any(key.startswith("shadow_") for key in after):
        out["shadow"] = {outcome: delta.get("shadow_" + outcome, 0.0) for outcome in SHADOW_OUTCOMES}
    if "cache_hit" in after or "cache_miss" in after or "merged" in after:
        out["cache"] = cache_figures(delta)
    if any(key.startswith(("predicted_", "refused_")) for key in after) or "admission_error_s_count" in after:
        out["admission"] = admission_figures(delta)
    return out


def cache_figures(counts: Mapping[str, float]) -> dict[str, float]:
    """Output-cache lookups (hits, misses), inputs merged in flight, and the hit ratio (hits over
    lookups) and merged share (merged over lookups), from :func:`parse_metrics` counts."""
    hits, misses, merged = (counts.get(k, 0.0) for k in ("cache_hit", "cache_miss", "merged"))
    lookups = hits + misses
    return {
        "hits": hits,
        "misses": misses,
        "merged": merged,
        "hit_ratio": hits / lookups if lookups else math.nan,
        "merged_share": merged / lookups if lookups else math.nan,
    }


def admission_figures(counts: Mapping[str, float]) -> dict[str, Any]:
    """Predictive admission's record, from :func:`parse_metrics` counts: admitted inputs scored
    against their predicted answer time, the mean absolute error (ms), the share answered later
    than predicted, and the inputs refused before queueing, by reason."""
    scored = counts.get("admission_error_s_count", 0.0)
    early, late = counts.get("predicted_early", 0.0), counts.get("predicted_late", 0.0)
    return {
        "predictions": scored,
        "mean_error_ms": 1000.0 * counts.get("admission_error_s_sum", 0.0) / scored if scored else math.nan,
        "late_share": late / (early + late) if early + late else math.nan,
        "refused": {
            key[len("refused_") :]: value
            for key, value in sorted(counts.items())
            if key.startswith("refused_")
        },
    }


def admission_totals(text: str, model: str, version: str | None = None) -> dict[str, Any]:
    """:func:`admission_figures` of ``model`` since the server started, from one ``/metrics`` text
    (``version``: that version's series only)."""
    return admission_figures(parse_metrics(text, model, version))


def shadow_counters(text: str, model: str) -> dict[str, dict[str, float]]:
    """``model``'s shadow counters since the server started, by version pair (``"1->2"``):
    copies ``compared``, ``failed`` and ``shed``, top-1 ``agreements``, the server's
    ``agreement_ratio`` and the ``mean_score_difference`` of the compared inputs."""
    pairs: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        name, _, rest = line.partition("{")
        labels_text, _, value = rest.rpartition("} ")
        labels = _labels(labels_text)
        if labels.get("model") != model or "shadow" not in labels:
            continue
        pair = pairs.setdefault(
            f"{labels.get('primary')}->{labels['shadow']}", {outcome: 0.0 for outcome in SHADOW_OUTCOMES}
        )
        if name == SHADOW_REQUESTS:
            pair[labels.get("outcome", "")] = float(value)
        elif name == SHADOW_AGREEMENTS:
            pair["agreements"] = float(value)
        elif name == SHADOW_AGREEMENT_RATIO:
            pair["agreement_ratio"] = float(value)
        elif name in (SHADOW_SCORE_DIFFERENCE + "_sum", SHADOW_SCORE_DIFFERENCE + "_count"):
            pair[name[len(SHADOW_SCORE_DIFFERENCE) + 1 :]] = float(value)
    for pair in pairs.values():
        total, count = pair.pop("sum", 0.0), pair.pop("count", 0.0)
        pair["mean_score_difference"] = total / count if count else math.nan
    return pairs


#: Gauges of a model's backlog: inputs queued, requests being handled.
BACKLOG = {"inference_engine_queue_depth": "queue_depth", "inference_engine_in_flight_requests": "in_flight"}


def backlog(text: str, model: str) -> dict[str, float]:
    """``model``'s inputs queued and requests in flight (every version), from ``/metrics`` text."""
    out = dict.fromkeys(BACKLOG.values(), 0.0)
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        name, _, rest = line.partition("{")
        labels, _, value = rest.rpartition("} ")
        if name in BACKLOG and _labels(labels).get("model") == model:
            out[BACKLOG[name]] += float(value)
    return out


async def wait_idle(port: int, model: str, timeout_s: float = 30.0) -> float:
    """Wait until ``model`` has nothing queued or in flight (at most ``timeout_s``): what a flood
    left behind must not be the next window's backlog. Returns the seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        _, body = await fetch(port, "/metrics")
        if not any(backlog(body.decode(), model).values()):
            break
        await asyncio.sleep(0.1)
    return time.perf_counter() - started


@dataclass
class ServedModel:
    """One server process serving one model from ``repository``."""

    repository: Path
    model: str
    env: Mapping[str, str] = field(default_factory=dict)
    launcher: tuple[str, ...] = ("-m", "inference_engine")  # bench.serve_with swaps uvicorn's loop/parser
    args: tuple[str, ...] = ()  # more ``serve`` arguments (``--config FILE``: an extra settings layer)
    log_path: Path | None = None
    port: int = 0
    grpc_port: int = 0  # the gRPC listener's (the dev config serves gRPC): a free port, not 8001
    process: subprocess.Popen[bytes] | None = None
    cold_start_s: float = 0.0
    _psutil: psutil.Process | None = None
    _peak_rss: int = 0
    _sampling: threading.Event = field(default_factory=threading.Event)
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> ServedModel:
        self.port = self.port or free_port()
        self.grpc_port = self.grpc_port or free_port()
        environ = {**os.environ, **self.env}
        command = [
            sys.executable,
            *self.launcher,
            "serve",
            "--config-dir",
            str(ROOT / "configs"),
            "--env",
            "dev",
            "--model-repository",
            str(self.repository),
            "--model",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--grpc-port",
            str(self.grpc_port),
            *self.args,
        ]
        self._log = self.log_path.open("wb") if self.log_path else None
        sink = self._log if self._log is not None else subprocess.DEVNULL
        started = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, env=environ)
        self._psutil = psutil.Process(self.process.pid)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server for {self.model} exited with {self.process.returncode}: see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.perf_counter() - started > timeout:
                self.stop()
                raise TimeoutError(
                    f"server for {self.model} not ready in {timeout:.0f}s: see {self.log_path}"
                )
            time.sleep(0.05)
        self.cold_start_s = time.perf_counter() - started
        self._peak_rss = self.rss()
        threading.Thread(target=self._sample_rss, daemon=True, name="rss-sampler").start()
        return self

    def _sample_rss(self) -> None:
        while not self._sampling.wait(0.2):
            try:
                self._peak_rss = max(self._peak_rss, self.rss())
            except psutil.Error:
                return

    def _processes(self) -> list[psutil.Process]:
        """The server and its workers (``server.workers`` above 1: a supervisor and N children)."""
        assert self._psutil is not None
        return [self._psutil, *self._psutil.children(recursive=True)]

    def rss(self) -> int:
        total = 0
        for process in self._processes():
            with contextlib.suppress(psutil.Error):
                total += int(process.memory_info().rss)
        return total

    @property
    def peak_rss_mb(self) -> float:
        return self._peak_rss / 2**20

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far (all its threads, and its workers')."""
        total = 0.0
        for process in self._processes():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def stop(self, timeout: float = 30.0) -> None:
        self._sampling.set()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> ServedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
