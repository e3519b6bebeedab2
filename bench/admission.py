"""Predictive admission under overload: refused at once, at no forward pass, on a prediction how good?

    python -m bench.admission [--quick] [--model tiny_cnn_paced] [--clients 64]
                              [--probe-deadline-ms 20] [--probes 100] [--out bench/results]

One server (``python -m inference_engine serve --env dev``, :class:`bench.server.ServedModel`),
the shipped default ``batching.admission: predictive``, one model (by default the paced tiny CNN of
:mod:`bench.workloads`: its forward pass, not decoding, is the bottleneck, so a queue builds):

1. **Control**: probes, one at a time, each with ``X-Request-Timeout-Ms: --probe-deadline-ms``,
   on the idle server: the deadline is meetable there, so they are answered (200).
2. **Overload**: ``--clients`` closed-loop clients with long deadlines (``X-Request-Timeout-Ms:
   60000``) keep the queue several batches deep, far past capacity; meanwhile ``--probes``
   probes with the short deadline, evenly spread, one at a time, each on a new connection. The
   queue ahead of a probe would make it miss its deadline: predictive admission refuses it with
   503 ``deadline_unmeetable`` and ``Retry-After``. Per probe: status, error code, the latency of
   the answer (target: under 50 ms, p50 and max), the answer time the server predicted and the
   inputs it counted ahead (from the refusal's message), ``Retry-After``.
3. **Accounting**: the background clients stop gracefully (each finishes its request, none is
   cut off), the server is left to empty, and ``/metrics`` read before and after the overload
   phase gives the inputs run through a forward pass (``inference_engine_batch_size`` sum). Every
   one must be an answered request (the background's 200s plus any probe let in): a refused
   probe costs no forward pass (the difference, expected 0), and the server's count of deadline
   refusals must equal the probes refused.
4. **Predictions**: predictive admission scores each admitted input's predicted answer time
   against the actual one; from ``/metrics``, the mean absolute error (sum / count), its p50 and
   p90 (histogram), and the share answered later than predicted, over the whole run.

Results: ``<stem>.json`` and ``<stem>.md`` under ``--out`` (default ``bench/results/admission.*``).
``--quick``: fewer clients, probes and seconds, a smoke run for CI (about 15 s), not numbers to
quote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import load
from bench.documents import write
from bench.server import ServedModel, admission_figures, parse_metrics, wait_idle

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODEL = "tiny_cnn_paced"
#: The background clients' deadline: long enough that none of them is ever refused.
BACKGROUND_DEADLINE_MS = 60_000
#: Probe refusals should be answered within this (p50 and max).
TARGET_MS = 50.0
ERROR_HISTOGRAM = "inference_engine_admission_prediction_error_seconds_bucket"
_PREDICTED = re.compile(r"in about (\d+) ms \((\d+) inputs ahead\)")


@dataclass(frozen=True)
class Plan:
    clients: int
    warmup_s: float
    duration_s: float
    probes: int
    idle_probes: int


FULL = Plan(clients=64, warmup_s=2.0, duration_s=10.0, probes=100, idle_probes=20)
QUICK = Plan(clients=32, warmup_s=0.5, duration_s=1.5, probes=15, idle_probes=5)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- probes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One probe's answer as the client saw it."""

    status: int
    headers: dict[str, str]
    body: bytes
    latency_ms: float

    def as_dict(self) -> dict[str, Any]:
        try:
            error = json.loads(self.body).get("error") or {}
        except (ValueError, AttributeError):
            error = {}
        message = str(error.get("message", "")) if isinstance(error, dict) else ""
        predicted = _PREDICTED.search(message)
        retry = self.headers.get("retry-after")
        return {
            "status": self.status,
            # The error's kind: "type" in the server's error body ("code" accepted too).
            "code": (error.get("type") or error.get("code")) if isinstance(error, dict) else None,
            "latency_ms": self.latency_ms,
            "predicted_ms": float(predicted[1]) if predicted else None,
            "ahead": int(predicted[2]) if predicted else None,
            "retry_after_s": float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
        }


async def probe(port: int, raw: bytes) -> Answer:
    """Send one request on a new connection; the answer's status, header fields and body, and the
    time from connecting to the last byte."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()
    return Answer(int(head[0].split(" ", 2)[1]), headers, body, 1000 * (time.perf_counter() - started))


def probe_series(port: int, raws: Sequence[bytes], interval_s: float) -> list[dict[str, Any]]:
    """Send ``raws`` one at a time, ``interval_s`` apart, each on a new connection: run in a process
    of its own, so the probes' latency is the server's and not the background clients' event
    loop, which shares this process's GIL and a busy machine's cores with them."""

    async def series() -> list[dict[str, Any]]:
        started = time.perf_counter()
        answers = []
        for index, raw in enumerate(raws):
            await asyncio.sleep(max(0.0, started + index * interval_s - time.perf_counter()))
            answers.append((await probe(port, raw)).as_dict())
        return answers

    return asyncio.run(series())


# -- the overload ------------------------------------------------------------------------------------


class Background:
    """``clients`` closed-loop clients that stop gracefully: each finishes the request it has sent
    (none is cut off, so none is dropped on the server), and every answer is counted by status."""

    def __init__(self, port: int, requests: Sequence[bytes], clients: int) -> None:
        self.port, self.requests, self.clients = port, requests, clients
        self.statuses: Counter[str] = Counter()
        self.latencies_s: list[float] = []  # of the 200s answered while measuring
        self.measuring = False
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self, index: int) -> None:
        connection = await load.connect(self.port)
        sent = index
        while not self._stop.is_set():
            raw = self.requests[sent % len(self.requests)]
            sent += 1
            started = time.perf_counter()
            try:
                status, _ = await connection.request(raw)
            except ConnectionError:
                self.statuses["lost"] += 1
                connection = await load.connect(self.port)
                continue
            self.statuses[str(status)] += 1
            if status == 200 and self.measuring:
                self.latencies_s.append(time.perf_counter() - started)
            if connection.closed:
                connection = await load.connect(self.port)
        connection.close()


async def scrape(port: int) -> str:
    _, body = await load.fetch(port, "/metrics")
    return body.decode()


def counters(text: str, model: str) -> dict[str, float]:
    """What the accounting reads from ``/metrics``: batch sizes, admission counts
    (:func:`bench.server.parse_metrics`), answers by status and dropped inputs by reason
    (:func:`bench.stress.model_counters`: ``status:200``, ``dropped:deadline``)."""
    from bench.stress import model_counters

    return {**parse_metrics(text, model), **model_counters(text, model)}


def error_buckets(text: str, model: str) -> dict[float, float]:
    """The prediction-error histogram's cumulative counts by upper bound (seconds)."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith(ERROR_HISTOGRAM + "{") or f'model="{model}"' not in line:
            continue
        labels, _, value = line[len(ERROR_HISTOGRAM) + 1 :].rpartition("} ")
        bound = labels.split('le="', 1)[1].split('"', 1)[0]
        upper = math.inf if bound == "+Inf" else float(bound)
        buckets[upper] = buckets.get(upper, 0.0) + float(value)
    return buckets


async def session(server: ServedModel, requests: Mapping[str, list[bytes]], plan: Plan) -> dict[str, Any]:
    """The control probes, the overload with its probes, the accounting: everything measured."""
    port = server.port
    await load.closed_loop(port, requests["background"], 1, 0.0, 0.5)  # warm the forward times up
    await wait_idle(port, server.model)
    idle = [
        (await probe(port, requests["probe"][i % len(requests["probe"])])).as_dict()
        for i in range(plan.idle_probes)
    ]
    await wait_idle(port, server.model)
    before = await scrape(port)
    background = Background(port, requests["background"], plan.clients)
    background.start()
    await asyncio.sleep(plan.warmup_s)
    background.measuring = True
    interval = plan.duration_s / max(1, plan.probes)
    raws = [requests["probe"][index % len(requests["probe"])] for index in range(plan.probes)]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=1) as prober:
        running = asyncio.get_running_loop().run_in_executor(prober, probe_series, port, raws, interval)
        probes = await running
    await asyncio.sleep(max(0.0, started + plan.duration_s - time.perf_counter()))
    background.measuring = False
    measured_s = time.perf_counter() - started
    await background.stop()
    waited = await wait_idle(port, server.model)
    after = await scrape(port)
    return {
        "idle_probes": idle,
        "probes": probes,
        "background": {
            "clients": plan.clients,
            "deadline_ms": BACKGROUND_DEADLINE_MS,
            "statuses": dict(background.statuses),
            "measured_s": measured_s,
            "rps": len(background.latencies_s) / measured_s,
            **load.summarise(background.latencies_s),
        },
        "idle_wait_s": waited,
        "metrics": {"before": counters(before, server.model), "after": counters(after, server.model)},
        "error_buckets": {str(k): v for k, v in error_buckets(after, server.model).items()},
    }


# -- the summary -------------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float:
    data = [float(v) for v in values if v is not None]
    return statistics.median(data) if data else math.nan


def summarise(measured: Mapping[str, Any]) -> dict[str, Any]:
    """The figures of one session: the control, the refusals and their latency, the forward-pass
    accounting and the prediction error."""
    from bench.stress import histogram_quantile

    idle, probes, background = measured["idle_probes"], measured["probes"], measured["background"]
    refused = [p for p in probes if p["status"] == 503 and p["code"] == "deadline_unmeetable"]
    admitted = [p for p in probes if p["status"] == 200]
    before, after = measured["metrics"]["before"], measured["metrics"]["after"]
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    answered = background["statuses"].get("200", 0) + len(admitted)
    forwarded = delta.get("batch_size_sum", 0.0)
    latencies = [p["latency_ms"] for p in refused]
    buckets = {float(k): v for k, v in measured["error_buckets"].items()}
    record = admission_figures(after)
    p50, p_max = _median(latencies), max(latencies) if latencies else math.nan
    return {
        "control": {
            "probes": len(idle),
            "answered": sum(1 for p in idle if p["status"] == 200),
            "statuses": dict(Counter(str(p["status"]) for p in idle)),
            "p50_ms": _median([p["latency_ms"] for p in idle]),
        },
        "probes": {
            "sent": len(probes),
            "refused": len(refused),
            "admitted": len(admitted),
            "statuses": dict(Counter(f"{p['status']} {p['code'] or ''}".strip() for p in probes)),
            "refusal_p50_ms": p50,
            "refusal_p99_ms": float(statistics.quantiles(latencies, n=100)[98])
            if len(latencies) > 1
            else p_max,
            "refusal_max_ms": p_max,
            "target_ms": TARGET_MS,
            "target_met": bool(latencies) and p_max < TARGET_MS,
            "predicted_ms": _median([p["predicted_ms"] for p in refused]),
            "ahead": _median([p["ahead"] for p in refused]),
            "retry_after_s": _median([p["retry_after_s"] for p in refused]),
        },
        "forward": {
            "inputs_forwarded": forwarded,
            "batches": delta.get("batch_size_count", 0.0),
            "answered_200": answered,
            "extra_inputs": forwarded - answered,
            "server_200": delta.get("status:200", 0.0),
            "refusals_counted": delta.get("refused_deadline", 0.0),
            "dropped": sum(v for k, v in delta.items() if k.startswith("dropped:")),
        },
        "prediction": {
            **record,
            "p50_error_ms": 1000 * histogram_quantile(0.5, buckets),
            "p90_error_ms": 1000 * histogram_quantile(0.9, buckets),
        },
    }


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown(document: Mapping[str, Any]) -> str:
    meta, s = document["meta"], document["summary"]
    m, background = meta["machine"], document["measured"]["background"]
    control, probes, forward, prediction = s["control"], s["probes"], s["forward"], s["prediction"]
    lines = [
        f"# Predictive admission under overload ({meta['mode']} run, {meta['started']})",
        "",
        f"Machine: {m['cores']} cores, {m['cpu_model']}; load average before "
        f"{', '.join(f'{x:.2f}' for x in m['load_average'])}, after "
        f"{', '.join(f'{x:.2f}' for x in meta['load_average_after'])}. Run took "
        f"{meta['duration_s'] / 60:.1f} min. Command: `{meta['command']}`.",
        "",
        f"Model `{document['model']}`: {document['model_description']}. Background: "
        f"{background['clients']} closed-loop clients with a "
        f"{background['deadline_ms'] / 1000:g} s deadline: "
        f"{_f(background['rps'])} answers/s, p50 {_f(background['p50_ms'])} ms, p99 "
        f"{_f(background['p99_ms'])} ms (what the queue ahead costs a request), statuses "
        f"{background['statuses']}. Probes: `X-Request-Timeout-Ms: {document['probe_deadline_ms']}`, one at "
        f"a time on a new connection, {probes['sent']} over {_f(background['measured_s'])} s.",
        "",
        "| figure | measured | expected |",
        "| --- | --- | --- |",
        f"| control: probes answered on the idle server | {control['answered']} of {control['probes']} "
        f"(p50 {_f(control['p50_ms'])} ms) | all |",
        "| probes refused under overload (503 `deadline_unmeetable`) "
        f"| {probes['refused']} of {probes['sent']} "
        f"({probes['statuses']}) | all |",
        f"| refusal latency p50 / p99 / max | {_f(probes['refusal_p50_ms'])} / "
        f"{_f(probes.get('refusal_p99_ms'))} / {_f(probes['refusal_max_ms'])} ms "
        f"| < {probes['target_ms']:g} ms: **{'met' if probes['target_met'] else 'not met'}** |",
        f"| answer time predicted at refusal (median), inputs ahead | {_f(probes['predicted_ms'], 0)} ms, "
        f"{_f(probes['ahead'], 0)} | near the background's p50 |",
        f"| Retry-After (median) | {_f(probes['retry_after_s'])} s | |",
        f"| inputs through a forward pass / requests answered 200 (background + probes let in; the "
        f"server counted {_f(forward['server_200'], 0)}) "
        f"| {_f(forward['inputs_forwarded'], 0)} / {_f(forward['answered_200'], 0)} "
        f"(difference {_f(forward['extra_inputs'], 0)}, {_f(forward['batches'], 0)} batches) "
        "| equal: refused probes cost no forward pass |",
        f"| deadline refusals counted by the server | {_f(forward['refusals_counted'], 0)} "
        f"| {probes['refused']} |",
        f"| inputs dropped in the queue | {_f(forward['dropped'], 0)} | 0 |",
        f"| prediction error over the run: mean / p50 / p90 | {_f(prediction['mean_error_ms'], 2)} / "
        f"{_f(prediction['p50_error_ms'], 2)} / {_f(prediction['p90_error_ms'], 2)} ms "
        f"({_f(prediction['predictions'], 0)} admitted inputs scored) | |",
        f"| answered later than predicted | {_f(100 * prediction['late_share'], 0)}% | |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from bench.run import machine, versions
    from bench.workloads import DEFAULT_CACHE, model_specs, request_set, write_repository

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer clients, probes and seconds (a smoke run)"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(model_specs()))
    parser.add_argument("--clients", type=int, help="background closed-loop clients (default 64; quick 32)")
    parser.add_argument("--probe-deadline-ms", type=int, default=20, help="the probes' deadline (default 20)")
    parser.add_argument("--probes", type=int, help="probes under overload (default 100; quick 15)")
    parser.add_argument("--duration", type=float, help="seconds of probing (default 10; quick 1.5)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("--stem", help="result file names (default admission, quick: admission-quick)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="built model weights (reused)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = Plan(
        clients=args.clients or plan.clients,
        warmup_s=plan.warmup_s,
        duration_s=args.duration or plan.duration_s,
        probes=args.probes or plan.probes,
        idle_probes=plan.idle_probes,
    )
    stem = args.stem or ("admission-quick" if args.quick else "admission")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "mode": "quick" if args.quick else "default",
        "command": " ".join(["python -m bench.admission", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "versions": versions(),
        "plan": plan.__dict__,
    }
    log(f"machine: {meta['machine']['cores']} cores, load {meta['machine']['load_average']}")
    spec = model_specs()[args.model]
    bodies = request_set(args.model, "photos640", "native")
    log_path = args.out / f"{stem}-server.log.tmp"  # kept if the server fails
    with tempfile.TemporaryDirectory(prefix="bench-admission-") as scratch:
        repo = write_repository(spec, args.cache, Path(scratch))
        with ServedModel(repo, spec.name, env=spec.settings_env, log_path=log_path).start() as server:
            log(f"  {spec.name} ready in {server.cold_start_s:.1f}s")

            def built(deadline_ms: int) -> list[bytes]:
                headers = {"X-Request-Timeout-Ms": str(deadline_ms)}
                return [
                    load.build_request(bodies.path, body, server.port, bodies.content_type, headers)
                    for body in bodies.bodies
                ]

            requests = {"background": built(BACKGROUND_DEADLINE_MS), "probe": built(args.probe_deadline_ms)}
            measured = load.run(session(server, requests, plan))
    log_path.unlink(missing_ok=True)
    document: dict[str, Any] = {
        "meta": meta,
        "model": spec.name,
        "model_description": spec.description,
        "probe_deadline_ms": args.probe_deadline_ms,
        "measured": measured,
        "summary": summarise(measured),
    }
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    meta["duration_s"] = time.time() - started
    meta["load_average_after"] = list(os.getloadavg())
    paths = write(document, args.out, stem, markdown)
    s = document["summary"]
    log(
        f"done in {meta['duration_s']:.0f}s: probes refused {s['probes']['refused']}/{s['probes']['sent']}, "
        f"refusal p50/max {s['probes']['refusal_p50_ms']:.1f}/{s['probes']['refusal_max_ms']:.1f} ms, "
        f"extra forward inputs {s['forward']['extra_inputs']:.0f}: {', '.join(map(str, paths))}"
    )
    print(paths[1].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
