"""Stress to the knee: ramp open-loop load until the 200s' latency leaves its bound; report the knee.

    python -m bench.stress [--workload efficientnet_lite0] [--fractions 0.25 0.5 ... 3]
                           [--step-s 4] [--max-queue-size 32] [--out bench/results]

1. **The server**: ``python -m inference_engine serve --env dev`` (:class:`bench.server.ServedModel`)
   with one model of :mod:`bench.workloads`, its queue set to ``--max-queue-size``. The effective
   batching values and the request deadline are read back from the server's ``GET /info``.
2. **Capacity**: a short closed loop (:func:`bench.load.closed_loop`) at two batches' worth of
   clients per instance: answers per second while the model is never idle and nothing is refused.
3. **The ramp**: one open-loop Poisson step (:func:`bench.load.open_loop`) per fraction of that
   capacity, lowest first. Latency counts from each request's *scheduled* time, so a backed-up
   server cannot hide queueing. Per step: the offered and achieved rates, the status mix (200,
   503, 429, other; *other* includes requests that got no answer at all), p50/p99 of the 200s,
   and, from two ``/metrics`` scrapes at the window's edges, the server's p99 over every answer
   (``histogram_quantile`` over its request-duration histogram, as a dashboard computes it: the
   generator times only the 200s), its refusals by error type, the mean batch and queue wait.
4. **The knee** (:func:`find_knee`): the last step before the first one whose 200s' p99 leaves
   the latency bound (``--bound-ms``, or ``--bound-factor`` x the lightest step's p99) or whose
   answers are not ~all 200 (more than ``--max-not-ok`` of them).
5. **Past the knee** (:func:`beyond_knee`): how the refusals grow, and whether the 200s' p99
   stays within each step's queue bound (:func:`queue_bound_ms`): the light-load p99 plus what a
   full bounded queue and the batches around it add, in full batches at the step's own mean
   forward pass (:func:`step_queue_bounds`). Nothing else may appear: no other status, no
   request left unanswered.

Results: ``<stem>.json`` and ``<stem>.md`` under ``--out`` (default ``bench/results/stress.*``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil

from bench import load
from bench.server import ServedModel, parse_metrics, window_metrics

#: Statuses that shed load: the queue is full (503 ``queue_full``) or a client is over its quota.
SHED_STATUSES = (503, 429)
#: Offered load per step, as fractions of the closed-loop capacity: dense around the knee.
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 2.5, 3.0)
#: The shipped default model: ~60 req/s on 2 CPU cores, a load the generator itself can offer 3x of.
DEFAULT_WORKLOAD = "efficientnet_lite0"
#: Eight batches of the shipped model: a full queue is ~0.5 s of work, so a step of a few seconds
#: reaches the steady state. The shipped 256 holds ~4 s of work at 60 req/s; a step would have to
#: last minutes before its queue filled and the step stopped depending on the one before.
DEFAULT_MAX_QUEUE_SIZE = 32
RESULTS = Path(__file__).resolve().parent / "results"
#: Cores of other work (not the server, not the generator) that mark a step as disturbed: on 2
#: cores a neighbour holding one slowed EfficientNet's forward pass (two intra-op threads) 10x or more.
DISTURBED_CORES = 0.25

_SAMPLE = re.compile(
    r"^(?P<name>[A-Za-z_:][\w:]*)\{(?P<labels>.*)\} (?P<value>\S+)$"
)  # a route may hold braces
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_COUNTERS = {
    "inference_engine_requests_total": ("status", "status"),
    "inference_engine_errors_total": ("error", "type"),
    "inference_engine_dropped_inputs_total": ("dropped", "reason"),
    "inference_engine_request_duration_seconds_bucket": ("duration_le", "le"),
}


# -- /metrics and /info -----------------------------------------------------------------------------


def model_counters(text: str, model: str) -> dict[str, float]:
    """``model``'s answers by status, errors by type, dropped inputs by reason and its request-duration
    histogram (summed over routes), from ``/metrics`` text, keyed ``status:503``, ``error:queue_full``,
    ``dropped:deadline``, ``duration_le:0.25``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match["name"] not in _COUNTERS:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if labels.get("model") != model:
            continue
        prefix, label = _COUNTERS[match["name"]]
        key = f"{prefix}:{labels[label]}"
        out[key] = out.get(key, 0.0) + float(match["value"])
    return out


def counter_delta(before: Mapping[str, float], after: Mapping[str, float], prefix: str) -> dict[str, float]:
    """What grew between two scrapes, for the keys ``prefix:<label>``, by label (zeros left out)."""
    keys = {k for k in (*before, *after) if k.startswith(prefix + ":")}
    grown = {k.split(":", 1)[1]: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {label: value for label, value in sorted(grown.items()) if value}


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float:
    """Prometheus' ``histogram_quantile``: ``q`` (0..1) of cumulative counts by upper bound.

    Linear within the bucket the rank falls in, from its lower bound (0 for the first); a rank in
    the ``+Inf`` bucket answers the highest finite bound. ``nan`` when nothing was observed.
    """
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return math.nan
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:  # an empty bucket reached only by a rank of 0
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


async def served_facts(port: int, model: str) -> dict[str, Any]:
    """The model's effective batching values and instances, and the request deadline (``GET /info``)."""
    status, body = await load.fetch(port, "/info")
    if status != 200:
        raise RuntimeError(f"GET /info answered {status}")
    info = json.loads(body)
    (entry,) = (m for m in info["models"] if m["name"] == model)
    return {
        **entry["batching"],
        "instances": entry["instances"],
        "request_timeout_s": info["config"]["server"]["request_timeout_s"],
    }


# -- one step --------------------------------------------------------------------------------------


@dataclass
class Step:
    """One open-loop step at a fixed offered rate: what the client saw, and what the server counted."""

    fraction: float  # of the capacity estimate
    offered_rps: float  # the Poisson rate asked for
    duration_s: float  # the measured window
    scheduled: int  # requests due in the window
    statuses: dict[int, int]  # their answers, by HTTP status
    #: Due in the window but never answered: a transport error, the generator's connection cap,
    #: or no answer within the drain timeout.
    no_answer: int
    ok_p50_ms: float  # of the 200s, from each request's scheduled time
    ok_p99_ms: float
    ok_max_ms: float
    #: From ``/metrics`` at the window's edges: ``p99_all_ms`` (every answer, server-side),
    #: ``statuses``, ``errors`` (by type), ``dropped``, ``avg_batch_size``, ``queue_wait_ms``, ...
    server: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def shed(self) -> int:
        return sum(self.statuses.get(status, 0) for status in SHED_STATUSES)

    @property
    def total(self) -> int:
        """Every request due in the window: answered or not."""
        return sum(self.statuses.values()) + self.no_answer

    @property
    def other(self) -> int:
        """Neither 200 nor shed: any other status, or no answer."""
        return self.total - self.ok - self.shed

    @property
    def not_ok_share(self) -> float:
        return (self.total - self.ok) / self.total if self.total else 0.0

    @property
    def goodput_rps(self) -> float:
        return self.ok / self.duration_s

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the derived counts."""
        document = asdict(self)
        document["statuses"] = {str(k): v for k, v in sorted(self.statuses.items())}
        for name in ("ok", "shed", "other", "total", "not_ok_share", "goodput_rps"):
            document[name] = getattr(self, name)
        return document


def scheduled_in_window(rate: float, warmup_s: float, duration_s: float, seed: int) -> int:
    """How many of :func:`bench.load.open_loop`'s arrivals fall in its measured window."""
    schedule = load.poisson_schedule(rate, warmup_s + duration_s, seed)
    return sum(1 for offset in schedule if warmup_s <= offset < warmup_s + duration_s)


def step_from_window(
    window: load.Window, fraction: float, scheduled: int, server: dict[str, Any] | None = None
) -> Step:
    """A :class:`Step` from an open-loop window (its ``errors`` count non-200 answers and the rest)."""
    not_ok_answers = sum(count for status, count in window.statuses.items() if status != 200)
    summary = load.summarise(window.latencies_s)
    return Step(
        fraction=fraction,
        offered_rps=window.level,
        duration_s=window.duration_s,
        scheduled=scheduled,
        statuses=dict(window.statuses),
        no_answer=window.errors - not_ok_answers,
        ok_p50_ms=summary["p50_ms"],
        ok_p99_ms=summary["p99_ms"],
        ok_max_ms=summary["max_ms"],
        server=server or {},
    )


def server_window(
    before: tuple[dict[str, float], dict[str, float]],
    after: tuple[dict[str, float], dict[str, float]],
    seconds: float,
) -> dict[str, Any]:
    """What the server did in the ``seconds`` between two scrapes (``(model_counters, parse_metrics)``).

    ``ok_rps`` is the rate of 200s it sent meanwhile: unlike the client's count of 200s among the
    requests due in the window, it does not credit a backlog answered after the window to it.
    """
    buckets = {float(le): n for le, n in counter_delta(before[0], after[0], "duration_le").items()}
    statuses = {k: int(v) for k, v in counter_delta(before[0], after[0], "status").items()}
    batching = window_metrics(before[1], after[1])
    return {
        "seconds": seconds,
        "ok_rps": statuses.get("200", 0) / seconds if seconds > 0 else math.nan,
        "p99_all_ms": 1000 * histogram_quantile(0.99, buckets),
        "statuses": statuses,
        "errors": {k: int(v) for k, v in counter_delta(before[0], after[0], "error").items()},
        "dropped": {k: int(v) for k, v in counter_delta(before[0], after[0], "dropped").items()},
        **{k: batching[k] for k in ("avg_batch_size", "queue_wait_ms", "inference_ms", "preprocess_ms")},
    }


async def scrape(port: int, model: str) -> tuple[dict[str, float], dict[str, float]]:
    """One ``/metrics`` scrape: ``(model_counters, parse_metrics)`` for ``model``."""
    _, body = await load.fetch(port, "/metrics")
    text = body.decode()
    return model_counters(text, model), parse_metrics(text, model)


def cpu_sample(server_pid: int | None) -> tuple[float, float, float]:
    """CPU seconds so far: the server process, this process (the load generator), the machine busy."""
    server = psutil.Process(server_pid).cpu_times() if server_pid else None
    own = psutil.Process().cpu_times()
    machine = psutil.cpu_times()
    busy = sum(getattr(machine, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
    return (server.user + server.system if server else math.nan), own.user + own.system, busy


def cpu_split(
    before: tuple[float, float, float], after: tuple[float, float, float], seconds: float
) -> dict[str, float]:
    """Cores used between two :func:`cpu_sample` calls: the server's, the generator's, and everything
    else on the machine (other work: what makes a step on a shared machine read slow)."""
    server, own, busy = ((a - b) / seconds for a, b in zip(after, before, strict=True))
    return {
        "server_cores": server,
        "loadgen_cores": own,
        "other_cores": max(0.0, busy - own - (server if math.isfinite(server) else 0.0)),
    }


async def measure_step(
    port: int,
    model: str,
    requests: Sequence[bytes],
    rate: float,
    *,
    fraction: float,
    warmup_s: float,
    duration_s: float,
    seed: int,
    drain_timeout_s: float,
    server_pid: int | None = None,
) -> Step:
    """One open-loop step at ``rate`` requests/s, ``/metrics`` and CPU times read at the window's
    edges (the server's CPU only with ``server_pid``)."""
    edges: list[tuple[float, tuple[float, float, float], tuple[dict[str, float], dict[str, float]]]] = []

    async def mark() -> None:
        edges.append((time.perf_counter(), cpu_sample(server_pid), await scrape(port, model)))

    window = await load.open_loop(
        port, requests, rate, warmup_s, duration_s, mark, mark, seed=seed, drain_timeout=drain_timeout_s
    )
    scheduled = scheduled_in_window(rate, warmup_s, duration_s, seed)
    (t0, cpu0, before), (t1, cpu1, after) = edges
    server = server_window(before, after, t1 - t0) | cpu_split(cpu0, cpu1, t1 - t0)
    return step_from_window(window, fraction, scheduled, server)


async def estimate_capacity(
    port: int,
    requests: Sequence[bytes],
    clients: int,
    warmup_s: float,
    duration_s: float,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Closed-loop 200s per second at ``clients`` (with p50/p99, errors and the CPU split of its
    window, :func:`cpu_split`): the ramp's 1x."""
    edges: list[tuple[float, tuple[float, float, float]]] = []

    async def mark() -> None:
        edges.append((time.perf_counter(), cpu_sample(server_pid)))

    window = await load.closed_loop(port, requests, clients, warmup_s, duration_s, mark, mark)
    result = window.result()
    (t0, cpu0), (t1, cpu1) = edges
    return (
        {"clients": clients, "duration_s": duration_s, "rps": result["throughput_rps"]}
        | {k: result[k] for k in ("p50_ms", "p99_ms", "errors", "statuses")}
        | cpu_split(cpu0, cpu1, t1 - t0)
    )


# -- the knee ----------------------------------------------------------------------------------------


def latency_bound_ms(light_p99_ms: float, factor: float, fixed_ms: float | None = None) -> float:
    """The 200s' p99 a step may reach and still be below the knee: fixed, or ``factor`` x light load."""
    return fixed_ms if fixed_ms is not None else factor * light_p99_ms


def queue_bound_ms(
    light_p99_ms: float, service_rps: float, max_queue_size: int, max_batch_size: int, instances: int = 1
) -> float:
    """The most a full bounded queue can add to the light-load p99, drained at ``service_rps``.

    A request accepted last waits for the ``max_queue_size`` queued ahead of it and the batches
    in flight (``instances x max_batch_size``), then for its own forward pass (as long as a full
    batch): ``(max_queue_size + 2 x instances x max_batch_size) / service_rps``. On top of the
    light-load p99, which already holds the HTTP, decode and one pass, this overcounts a little.
    """
    return light_p99_ms + 1000.0 * (max_queue_size + 2 * instances * max_batch_size) / service_rps


def step_queue_bounds(
    steps: Sequence[Step], light_p99_ms: float, facts: Mapping[str, Any], fallback_rps: float
) -> list[float]:
    """Each step's :func:`queue_bound_ms`, drained at the rate a full queue drains in that step.

    A full queue makes full batches, so the rate is ``instances x max_batch_size`` per mean
    forward pass of the step (``fallback_rps``, the capacity, where no batch ran): the wait a
    bounded queue explains at the speed the model actually had then, on a machine that may have
    slowed it. Below the knee batches are smaller and the figure is only an upper bound.
    """
    bounds = []
    for step in steps:
        pass_s = float(step.server.get("inference_ms", 0.0)) / 1000
        batches = facts["instances"] * facts["max_batch_size"]
        rate = batches / pass_s if pass_s > 0 else fallback_rps
        bounds.append(
            queue_bound_ms(
                light_p99_ms, rate, facts["max_queue_size"], facts["max_batch_size"], facts["instances"]
            )
        )
    return bounds


def out_of_bounds(step: Step, bound_ms: float, max_not_ok: float) -> str:
    """Why ``step`` is past the knee, or ``""`` when it is within its bounds."""
    if step.ok == 0:
        return "no 200 at all"
    reasons = []
    if step.not_ok_share > max_not_ok:
        reasons.append(f"{step.not_ok_share:.1%} of requests not 200 (> {max_not_ok:.1%})")
    if step.ok_p99_ms > bound_ms:
        reasons.append(f"p99 of the 200s {step.ok_p99_ms:.0f} ms > bound {bound_ms:.0f} ms")
    return "; ".join(reasons)


@dataclass(frozen=True)
class Knee:
    """Where the ramp left its bounds."""

    bound_ms: float
    max_not_ok: float
    index: int | None  # the knee: the last step within bounds before the first that is not
    first_over: int | None  # the first step out of bounds; None: the ramp never left them
    reason: str  # why ``first_over`` is out ("" when none is)


def find_knee(steps: Sequence[Step], bound_ms: float, max_not_ok: float = 0.01) -> Knee:
    """The knee of ``steps`` (in increasing offered load): the step before the first out of bounds.

    The first failure ends the search: a later step that happens to pass (a lull on a noisy
    machine) does not move the knee up. ``index`` is None when even the lightest step is out.
    """
    if any(b.offered_rps < a.offered_rps for a, b in pairwise(steps)):
        raise ValueError("steps must come in increasing offered load")
    for i, step in enumerate(steps):
        reason = out_of_bounds(step, bound_ms, max_not_ok)
        if reason:
            return Knee(bound_ms, max_not_ok, i - 1 if i else None, i, reason)
    return Knee(bound_ms, max_not_ok, len(steps) - 1 if steps else None, None, "")


def past_knee(steps: Sequence[Step], knee: Knee) -> list[Step]:
    return list(steps[0 if knee.index is None else knee.index + 1 :])


def beyond_knee(
    steps: Sequence[Step], knee: Knee, queue_bounds: Sequence[float], slack: float = 1.0
) -> dict[str, Any]:
    """Past the knee: the refusals' shares, the 200s' p99 against each step's queue bound, goodput.

    ``held`` says the overload was absorbed as it should be: every request answered 200 or shed
    (503/429), every step still answering 200s, and their p99 within ``slack`` x the step's
    ``queue_bounds`` entry (one per step of ``steps``).
    """
    past = past_knee(steps, knee)
    if not past:
        return {"steps": 0, "held": None}
    bounds = list(queue_bounds)[len(steps) - len(past) :]
    ratios = [s.ok_p99_ms / bound if s.ok else math.inf for s, bound in zip(past, bounds, strict=True)]
    return {
        "steps": len(past),
        "shed_share": [s.shed / s.total if s.total else 0.0 for s in past],
        "shed": sum(s.shed for s in past),
        "other": sum(s.other for s in past),
        "ok_p99_ms_max": max((s.ok_p99_ms for s in past if s.ok), default=math.nan),
        "worst_ratio": max(ratios),
        "slack": slack,
        "goodput_rps": [min(s.goodput_rps for s in past), max(s.goodput_rps for s in past)],
        "held": sum(s.other for s in past) == 0 and max(ratios) <= slack,
    }


# -- the report ----------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _rate(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def _cores(server: Mapping[str, Any]) -> str:
    return f"{_ratio(server.get('server_cores'))} / {_ratio(server.get('other_cores'))}"


def disturbed(step: Mapping[str, Any]) -> bool:
    """Other work on the machine took at least ``DISTURBED_CORES`` during the step (a step's dict)."""
    other = step.get("server", {}).get("other_cores")
    return other is not None and math.isfinite(other) and other >= DISTURBED_CORES


def _label(index: int, knee: Mapping[str, Any], step: Mapping[str, Any]) -> str:
    if index == knee["index"]:
        label = "**knee**"
    elif index == knee["first_over"]:
        label = f"out: {knee['reason']}"
    elif knee["first_over"] is not None and index > knee["first_over"]:
        label = "past the knee"
    else:
        label = "within"
    return label + (" (disturbed)" if disturbed(step) else "")


def markdown(document: Mapping[str, Any]) -> str:
    """The report of a saved run (:func:`run` writes ``document``)."""
    meta, capacity, facts = document["meta"], document["capacity"], document["server"]
    knee, beyond, steps = document["knee"], document["beyond"], document["steps"]
    machine = meta["machine"]
    lines = [
        f"# Stress to the knee: {document['workload']}",
        "",
        f"{meta['started']}, {machine['cores']} cores ({machine['cpu_model']}), load average "
        f"{machine['load_average'][0]:.2f} before, {meta['load_average_after'][0]:.2f} after; "
        f"`{meta['command']}`.",
        "",
        f"Server: {meta['server']}: `max_batch_size` {facts['max_batch_size']}, `max_queue_size` "
        f"{facts['max_queue_size']}, `instances` {facts['instances']}, request deadline "
        f"{facts['request_timeout_s']:g} s. Steps of {meta['step_s']:g} s after {meta['warmup_s']:g} s "
        "of warm-up; latency from each request's scheduled time.",
        "",
        f"- **Capacity** (closed loop, {capacity['clients']} clients, {capacity['duration_s']:g} s): "
        f"{capacity['rps']:.1f} req/s (p50 {_ms(capacity['p50_ms'])} ms, p99 {_ms(capacity['p99_ms'])} ms)"
        + (
            f"; disturbed: other work used {capacity['other_cores']:.2f} cores."
            if disturbed({"server": capacity})
            else "."
        ),
        f"- **Latency bound**: {document['bound']['rule']} = {knee['bound_ms']:.0f} ms; at most "
        f"{knee['max_not_ok']:.1%} of answers not 200.",
    ]
    if knee["index"] is None:
        lines.append(f"- **Knee**: none: the lightest step is already out ({knee['reason']}).")
    else:
        at = steps[knee["index"]]
        lines.append(
            f"- **Knee**: {at['offered_rps']:.1f} req/s offered ({at['fraction']:g} x capacity), "
            f"{at['goodput_rps']:.1f} req/s of 200s, their p99 {_ms(at['ok_p99_ms'])} ms."
        )
    if knee["first_over"] is None:
        lines.append("- The ramp never left its bounds: offer more load (`--fractions`).")
    else:
        over = steps[knee["first_over"]]
        lines.append(
            f"- **Out of bounds from** {over['offered_rps']:.1f} req/s ({over['fraction']:g} x): "
            f"{knee['reason']}."
        )
    if beyond.get("steps"):
        shares = beyond["shed_share"]
        lines.append(
            f"- **Past the knee** ({beyond['steps']} steps): refused (503/429) from {shares[0]:.0%} to "
            f"{shares[-1]:.0%} of requests; the 200s' p99 at most {_ms(beyond['ok_p99_ms_max'])} ms, "
            f"{_ratio(beyond['worst_ratio'])} x its step's queue bound at worst "
            f"({document['bound']['queue_rule']}; held within {beyond['slack']:g} x); "
            f"goodput {beyond['goodput_rps'][0]:.1f}-{beyond['goodput_rps'][1]:.1f} req/s; "
            f"other statuses or no answer: {beyond['other']}. "
            + ("**Held.**" if beyond["held"] else "**Not held.**")
        )
    if noisy := [f"{step['fraction']:g} x" for step in steps if disturbed(step)]:
        lines.append(
            f"- **Disturbed**: other work on the machine used {DISTURBED_CORES:g} cores or more during "
            f"{len(noisy)} of {len(steps)} steps ({', '.join(noisy)}): their figures describe the machine "
            "as much as the server; rerun on an idle machine before quoting them."
        )
    lines += [
        "",
        "| offered req/s | x capacity | due | 200/s | 200 | 503 | 429 | other | not 200 | 200 p50 ms "
        "| 200 p99 ms | queue bound ms | server 200/s | all p99 ms (server) | server refusals | avg batch "
        "| queue wait ms | pass ms | cores: server / other work | |",
        "| " + " | ".join(["---"] * 20) + " |",
    ]
    for i, step in enumerate(steps):
        statuses, server = step["statuses"], step["server"]
        refusals = ", ".join(f"{k} {v}" for k, v in server.get("errors", {}).items()) or "-"
        lines.append(
            f"| {step['offered_rps']:.1f} | {step['fraction']:g} | {step['total']} "
            f"| {step['goodput_rps']:.1f} "
            f"| {step['ok']} | {statuses.get('503', 0)} | {statuses.get('429', 0)} | {step['other']} "
            f"| {step['not_ok_share']:.1%} | {_ms(step['ok_p50_ms'])} | {_ms(step['ok_p99_ms'])} "
            f"| {_ms(step.get('queue_bound_ms'))} | {_rate(server.get('ok_rps'))} "
            f"| {_ms(server.get('p99_all_ms'))} | {refusals} "
            f"| {server.get('avg_batch_size', 0):.2f} "
            f"| {_ms(server.get('queue_wait_ms'))} | {_ms(server.get('inference_ms'))} "
            f"| {_cores(server)} | {_label(i, knee, step)} |"
        )
    lines += [
        "",
        "*due*: requests scheduled in the window; *200/s*: their 200s per second of window; "
        "*other*: any status but 200/503/429, or no answer; *queue bound*: the light-load p99 plus a "
        "full queue and two batches, in full batches at the step's mean forward pass (*pass*); "
        "*server 200/s*: the 200s the server sent from the window's start until its last request "
        "was answered, per second; *all p99 (server)*: its request-duration histogram over every "
        "answer of the model (bucketed, from arrival at the server); *server refusals*: its error "
        "counters by type; *cores*: CPU used by the server process and by everything on the machine "
        "but the server and the load generator (other work slows a step down).",
        "",
    ]
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def write(document: Mapping[str, Any], out: Path, stem: str) -> list[Path]:
    """``<stem>.json`` and ``<stem>.md`` under ``out``; the markdown is rendered from the JSON."""
    out.mkdir(parents=True, exist_ok=True)
    saved = jsonable(dict(document))
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(saved, indent=1) + "\n")
    md_path.write_text(markdown(json.loads(json_path.read_text())))
    return [json_path, md_path]


# -- the run -------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def describe(
    steps: Sequence[Step],
    capacity: Mapping[str, Any],
    facts: Mapping[str, Any],
    *,
    bound_factor: float,
    bound_ms: float | None,
    max_not_ok: float,
    slack: float,
) -> dict[str, Any]:
    """The knee, the bounds and the past-the-knee summary of a ramp, JSON-ready."""
    light = steps[0].ok_p99_ms
    bound = latency_bound_ms(light, bound_factor, bound_ms)
    knee = find_knee(steps, bound, max_not_ok)
    queue_bounds = step_queue_bounds(steps, light, facts, capacity["rps"])
    rule = f"{bound_ms:g} ms (fixed)" if bound_ms is not None else f"{bound_factor:g} x {light:.0f} ms"
    return {
        "bound": {
            "rule": rule + (" (the lightest step's p99 of the 200s)" if bound_ms is None else ""),
            "light_p99_ms": light,
            "queue_rule": "light-load p99 + (max_queue_size + 2 x instances x max_batch_size) "
            "/ (instances x max_batch_size per the step's mean forward pass)",
        },
        "knee": asdict(knee),
        "beyond": beyond_knee(steps, knee, queue_bounds, slack),
        "steps": [
            step.as_dict() | {"queue_bound_ms": b} for step, b in zip(steps, queue_bounds, strict=True)
        ],
    }


async def ramp(
    port: int,
    model: str,
    requests: Sequence[bytes],
    fractions: Sequence[float],
    *,
    warmup_s: float,
    step_s: float,
    capacity_s: float,
    clients: int | None = None,
    server_pid: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[Step]]:
    """The served facts, the capacity estimate and one step per fraction of it, lowest first."""
    facts = await served_facts(port, model)
    clients = clients or 2 * facts["max_batch_size"] * facts["instances"]
    capacity = await estimate_capacity(port, requests, clients, warmup_s, capacity_s, server_pid)
    log(f"  {facts}; capacity {capacity['rps']:.1f} req/s ({clients} clients)")
    steps: list[Step] = []
    for seed, fraction in enumerate(sorted(fractions)):
        step = await measure_step(
            port,
            model,
            requests,
            fraction * capacity["rps"],
            fraction=fraction,
            warmup_s=warmup_s,
            duration_s=step_s,
            seed=seed,
            drain_timeout_s=facts["request_timeout_s"] + 5.0,
            server_pid=server_pid,
        )
        steps.append(step)
        log(
            f"  {fraction:g}x = {step.offered_rps:.1f} req/s: 200 {step.goodput_rps:.1f}/s, "
            f"shed {step.shed}, other {step.other}, 200 p99 {step.ok_p99_ms:.0f} ms, "
            f"all p99 (server) {step.server['p99_all_ms']:.0f} ms, "
            f"pass {step.server['inference_ms']:.0f} ms, "
            f"cores: server {step.server['server_cores']:.2f}, other work {step.server['other_cores']:.2f}"
        )
    return facts, capacity, steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.run import machine, versions
    from bench.workloads import model_specs, request_set, write_repository

    spec = model_specs()[args.workload]
    overrides = {"max_queue_size": args.max_queue_size} if args.max_queue_size else {}
    bodies = request_set(args.workload, "photos640", "native")
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / f"{args.stem}-server.log.tmp"  # kept if the server fails
    started = time.time()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": " ".join(["python -m bench.stress", *sys.argv[1:]]),
        "machine": machine(),
        "versions": versions(),
        "server": f"`python -m inference_engine serve --env dev`, one model `{spec.name}`, "
        f"photos640 JPEGs to `{bodies.path}`",
        "warmup_s": args.warmup_s,
        "step_s": args.step_s,
        "model_yaml_overrides": overrides,
    }
    log(f"machine: {meta['machine']['cores']} cores, load {meta['machine']['load_average']}")
    with tempfile.TemporaryDirectory(prefix="stress-repo-") as scratch:
        repo = write_repository(spec, args.cache, Path(scratch), overrides)
        with ServedModel(repo, spec.name, env=spec.settings_env, log_path=log_path).start() as server:
            log(f"  {spec.name} ready in {server.cold_start_s:.1f}s")
            requests = [
                load.build_request(bodies.path, b, server.port, bodies.content_type) for b in bodies.bodies
            ]
            facts, capacity, steps = load.run(
                ramp(
                    server.port,
                    spec.name,
                    requests,
                    args.fractions,
                    warmup_s=args.warmup_s,
                    step_s=args.step_s,
                    capacity_s=args.capacity_s,
                    clients=args.clients,
                    server_pid=server.process.pid if server.process else None,
                )
            )
    log_path.unlink(missing_ok=True)
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    meta["duration_s"] = time.time() - started
    meta["load_average_after"] = list(os.getloadavg())
    return {
        "workload": args.workload,
        "meta": meta,
        "server": facts,
        "capacity": capacity,
        **describe(
            steps,
            capacity,
            facts,
            bound_factor=args.bound_factor,
            bound_ms=args.bound_ms,
            max_not_ok=args.max_not_ok,
            slack=args.slack,
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from bench.workloads import DEFAULT_CACHE, model_specs

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", default=DEFAULT_WORKLOAD, choices=sorted(model_specs()))
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=DEFAULT_FRACTIONS,
        help="offered load per step, x capacity",
    )
    parser.add_argument("--warmup-s", type=float, default=1.0, help="warm-up before each measured window")
    parser.add_argument("--step-s", type=float, default=4.0, help="measured seconds per step")
    parser.add_argument("--capacity-s", type=float, default=3.0, help="measured seconds of the closed loop")
    parser.add_argument(
        "--clients", type=int, help="closed-loop clients (default 2 x max_batch_size x instances)"
    )
    parser.add_argument(
        "--bound-factor", type=float, default=3.0, help="latency bound: x the lightest step's p99"
    )
    parser.add_argument("--bound-ms", type=float, help="a fixed latency bound instead")
    parser.add_argument(
        "--max-not-ok", type=float, default=0.01, help="share of non-200 answers below the knee"
    )
    parser.add_argument(
        "--slack",
        type=float,
        default=1.5,
        help="past the knee, held if the 200s' p99 is within this x the queue bound (default 1.5)",
    )
    parser.add_argument(
        "--max-queue-size",
        type=int,
        default=DEFAULT_MAX_QUEUE_SIZE,
        help=f"the model's max_queue_size (default {DEFAULT_MAX_QUEUE_SIZE}; 0: its model.yaml's)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("--stem", default="stress", help="result file names (default stress.json/.md)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="built model weights (reused)")
    args = parser.parse_args(argv)
    document = run(args)
    paths = write(document, args.out, args.stem)
    log(f"done in {document['meta']['duration_s']:.0f}s: {', '.join(map(str, paths))}")
    print(paths[1].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
