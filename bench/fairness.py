"""Fair queuing under a flood: does a light tenant keep its latency while a heavy one saturates the model?

    python -m bench.fairness [--quick] [--model tiny_cnn_paced] [--light-fraction 0.2]
                             [--heavy-factor 10] [--rounds 2] [--out bench/results]

Two servers, started side by side, serve the same model (:mod:`bench.workloads`; by default the
paced tiny CNN, whose forward pass is the bottleneck: the plain tiny CNN's queue never holds more
than the batch being formed, so there is nothing for a queue discipline to reorder) with
``auth.enabled: true`` and two API keys, a light tenant's and a heavy tenant's:

* **fair**: each key its own tenant (``fairness.tenants.light`` and ``.heavy``, weight 1 each):
  batches are filled by deficit round-robin across the tenants with work queued, and a tenant
  under its weighted share of a full queue is still let in.
* **one tenant**: both keys in one tenant (``fairness.tenants.shared``): one queue, first come
  first served, as a server without fair queuing.

First the model's capacity: answers per second of a short closed loop with two batches' worth of
clients. Then, on each server in turn (A B, then B A in the next round), two open-loop windows
of Poisson arrivals (:func:`bench.load.open_loop`; latency from each request's scheduled time,
so a backed-up server cannot hide its queue):

* **alone**: the light tenant only, at ``--light-fraction`` x capacity (modest);
* **flood**: the light tenant at the same rate, on the same schedule, and the heavy tenant at the
  same time at ``--heavy-factor`` x the light tenant's rate (by default 2x capacity: the model is
  saturated, the queue fills and the excess is refused with 503).

Reported, medians over the rounds: the light tenant's p50 and p99 (its 200s) alone and with the
flood, their ratio on each server, its answers per second and 503s; the heavy tenant's answers
per second and 503s; from ``/metrics`` per window, the batches and the refusals. Before every
window the server's queue is left to empty. Results: ``<stem>.json`` and ``<stem>.md`` under
``--out`` (default ``bench/results/fairness.*``). ``--quick``: one round of short windows, a
smoke run for CI (about 20 s), not numbers to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import load
from bench.documents import write
from bench.server import ServedModel, parse_metrics, wait_idle, window_metrics

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_MODEL = "tiny_cnn_paced"
#: The two tenants' API keys (a benchmark's, sent on loopback only).
KEYS = {"light": "bench-light-tenant-key", "heavy": "bench-heavy-tenant-key"}
#: The two servers, in turn order.
QUEUEING = ("fair", "one_tenant")
SCENARIOS = ("alone", "flood")
LABELS = {
    "fair": "fair (two tenants, weight 1 each)",
    "one_tenant": "one tenant (first come, first served)",
}


@dataclass(frozen=True)
class Plan:
    """How long things run."""

    rounds: int
    warmup_s: float
    duration_s: float
    capacity_s: float


FULL = Plan(rounds=2, warmup_s=2.0, duration_s=5.0, capacity_s=3.0)
QUICK = Plan(rounds=1, warmup_s=1.0, duration_s=1.5, capacity_s=1.0)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def server_settings(queueing: str) -> dict[str, Any]:
    """The settings layer (``--config``) of one server: auth on, both keys accepted, and the
    tenants ``queueing`` asks for."""
    from inference_engine.access import hash_key

    digests = {tenant: hash_key(key) for tenant, key in KEYS.items()}
    if queueing == "fair":
        tenants = {tenant: {"key_hashes": [digest], "weight": 1.0} for tenant, digest in digests.items()}
    else:
        tenants = {"shared": {"key_hashes": sorted(digests.values()), "weight": 1.0}}
    return {
        # The keys are accepted as API keys too: a server that reads accepted keys only from
        # auth.api_key_hashes would otherwise refuse to start with auth on.
        "auth": {"enabled": True, "api_key_hashes": sorted(digests.values())},
        "fairness": {"tenants": tenants},
    }


# -- measuring ---------------------------------------------------------------------------------------


async def capacity(server: ServedModel, requests: Sequence[bytes], clients: int, plan: Plan) -> float:
    """Answers per second of a closed loop of ``clients``: the model never idle."""
    window = await load.closed_loop(server.port, requests, clients, plan.warmup_s / 2, plan.capacity_s)
    return float(window.result()["throughput_rps"])


async def scrape(server: ServedModel) -> dict[str, float]:
    _, body = await load.fetch(server.port, "/metrics")
    return parse_metrics(body.decode(), server.model)


async def window(
    server: ServedModel,
    requests: Mapping[str, Sequence[bytes]],
    rates: Mapping[str, float],
    plan: Plan,
    seed: int,
) -> dict[str, Any]:
    """One window: each tenant of ``rates`` sending Poisson arrivals at its rate, all at once, on
    the same clock; what each saw, and what the server did (``/metrics`` at the window's edges)."""
    waited = await wait_idle(server.port, server.model)
    edges: list[dict[str, float]] = []

    async def mark() -> None:
        edges.append(await scrape(server))

    tenants = list(rates)
    runs = await asyncio.gather(
        *(
            load.open_loop(
                server.port,
                requests[tenant],
                rates[tenant],
                plan.warmup_s,
                plan.duration_s,
                *((mark, mark) if index == 0 else ()),
                seed=1000 * seed + index,
            )
            for index, tenant in enumerate(tenants)
        )
    )
    return {
        "idle_wait_s": waited,
        **{tenant: run.result() for tenant, run in zip(tenants, runs, strict=True)},
        "server": window_metrics(edges[0], edges[-1]) if len(edges) == 2 else {},
    }


def tenant_note(result: Mapping[str, Any]) -> str:
    statuses = result["statuses"]
    return (
        f"{result['throughput_rps']:.1f} 200/s, p50 {result['p50_ms']:.1f} ms, "
        f"p99 {result['p99_ms']:.1f} ms, 503 {statuses.get('503', 0)}, errors {result['errors']}"
    )


def measure(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    from bench.workloads import model_specs, request_set, write_repository

    spec = model_specs()[args.model]
    bodies = request_set(args.model, "photos640", "native")
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {q: {s: [] for s in SCENARIOS} for q in QUEUEING}
    with tempfile.TemporaryDirectory(prefix="bench-fairness-") as scratch, contextlib.ExitStack() as stack:
        servers: dict[str, ServedModel] = {}
        for queueing in QUEUEING:
            folder = Path(scratch) / queueing
            repo = write_repository(spec, args.cache, folder / "repo")
            config = folder / "settings.yaml"
            config.write_text(yaml.safe_dump(server_settings(queueing), sort_keys=False))
            log_path = args.out / f"{args.stem}-server-{queueing}.log.tmp"  # kept if the server fails
            server = ServedModel(
                repo, spec.name, env=spec.settings_env, log_path=log_path, args=("--config", str(config))
            )
            servers[queueing] = stack.enter_context(server.start())
            log(f"  {queueing}: {spec.name} ready in {server.cold_start_s:.1f}s")
        requests = {
            queueing: {
                tenant: [
                    load.build_request(
                        bodies.path, body, server.port, bodies.content_type, {"X-API-Key": key}
                    )
                    for body in bodies.bodies
                ]
                for tenant, key in KEYS.items()
            }
            for queueing, server in servers.items()
        }
        batch = int(spec.config.get("max_batch_size") or 8) * int(spec.config.get("instances") or 1)
        clients = args.capacity_clients or 2 * batch
        measured = load.run(capacity(servers["fair"], requests["fair"]["light"], clients, plan))
        light_rate = args.light_rate or round(args.light_fraction * measured, 1)
        heavy_rate = round(args.heavy_factor * light_rate, 1)
        log(
            f"  capacity {measured:.1f} req/s ({clients} clients); light tenant {light_rate:.1f} req/s, "
            f"heavy tenant {heavy_rate:.1f} req/s ({heavy_rate / measured:.2f}x capacity)"
        )

        async def rounds() -> None:
            for round_ in range(plan.rounds):
                order = QUEUEING if round_ % 2 == 0 else tuple(reversed(QUEUEING))
                for queueing in order:
                    server = servers[queueing]
                    for scenario in SCENARIOS:
                        rates = {"light": light_rate} | ({"heavy": heavy_rate} if scenario == "flood" else {})
                        result = await window(server, requests[queueing], rates, plan, seed=round_)
                        samples[queueing][scenario].append(result)
                        heavy = f"; heavy: {tenant_note(result['heavy'])}" if "heavy" in result else ""
                        log(
                            f"    {queueing} {scenario} (round {round_ + 1}): "
                            f"light: {tenant_note(result['light'])}{heavy}"
                        )

        load.run(rounds())
        cold = {queueing: server.cold_start_s for queueing, server in servers.items()}
    for queueing in QUEUEING:
        (args.out / f"{args.stem}-server-{queueing}.log.tmp").unlink(missing_ok=True)
    return {
        "model": spec.name,
        "model_description": spec.description,
        "capacity": {"clients": clients, "rps": measured},
        "rates": {"light": light_rate, "heavy": heavy_rate},
        "cold_start_s": cold,
        "settings": {queueing: server_settings(queueing) for queueing in QUEUEING},
        "samples": samples,
    }


# -- the summary and the report -----------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float:
    data = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return statistics.median(data) if data else math.nan


def _status(result: Mapping[str, Any] | None, status: str) -> int:
    return int(result["statuses"].get(status, 0)) if result else 0


def summarise(samples: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]) -> dict[str, Any]:
    """Medians over the rounds, per server and scenario, and each server's light p99 with the
    flood over its p99 alone (and the same for p50)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for queueing, scenarios in samples.items():
        table[queueing] = {}
        for scenario, runs in scenarios.items():
            light = [run["light"] for run in runs]
            heavy = [run.get("heavy") for run in runs]
            table[queueing][scenario] = {
                "light_p50_ms": _median([r["p50_ms"] for r in light]),
                "light_p99_ms": _median([r["p99_ms"] for r in light]),
                "light_rps": _median([r["throughput_rps"] for r in light]),
                "light_503": sum(_status(r, "503") for r in light),
                "light_errors": sum(r["errors"] for r in light),
                "heavy_rps": _median([h["throughput_rps"] if h else None for h in heavy]),
                "heavy_p99_ms": _median([h["p99_ms"] if h else None for h in heavy]),
                "heavy_503": sum(_status(h, "503") for h in heavy),
                "heavy_errors": sum(h["errors"] for h in heavy if h),
                "avg_batch_size": _median([run["server"].get("avg_batch_size") for run in runs]),
                "runs": len(runs),
            }
        alone, flood = table[queueing].get("alone"), table[queueing].get("flood")
        if alone and flood:
            for key in ("light_p50_ms", "light_p99_ms"):
                flood[key.replace("_ms", "_vs_alone")] = (
                    flood[key] / alone[key] if alone[key] and not math.isnan(alone[key]) else math.nan
                )
    return table


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown(document: Mapping[str, Any]) -> str:
    meta, summary = document["meta"], document["summary"]
    m = meta["machine"]
    rates, cap = document["rates"], document["capacity"]
    lines = [
        f"# Fair queuing under a flood ({meta['mode']} run, {meta['started']})",
        "",
        f"Machine: {m['cores']} cores, {m['cpu_model']}; load average before "
        f"{', '.join(f'{x:.2f}' for x in m['load_average'])}, after "
        f"{', '.join(f'{x:.2f}' for x in meta['load_average_after'])}. Run took "
        f"{meta['duration_s'] / 60:.1f} min. Command: `{meta['command']}`.",
        "",
        f"Model `{document['model']}`: {document['model_description']}. Capacity "
        f"{_f(cap['rps'])} req/s (closed loop, {cap['clients']} clients). Light tenant: Poisson arrivals "
        f"at {_f(rates['light'])} req/s; heavy tenant (flood): {_f(rates['heavy'])} req/s at the same time "
        f"({_f(rates['heavy'] / cap['rps'], 2)}x capacity). Two servers, auth on, the light and heavy "
        "keys each its own tenant (fair) or both in one tenant (first come, first served). Every "
        f"window {meta['plan']['duration_s']:g} s after {meta['plan']['warmup_s']:g} s of warm-up, "
        f"{meta['plan']['rounds']} round(s), the servers taking turns; medians over the rounds, 503s "
        "summed. Latency of the 200s, from each request's scheduled time.",
        "",
    ]
    fair = summary.get("fair", {}).get("flood", {})
    fifo = summary.get("one_tenant", {}).get("flood", {})
    lines += [
        "**The light tenant's p99 with the flood / alone: "
        f"{_f(fair.get('light_p99_vs_alone'), 2)}x with fair queuing, "
        f"{_f(fifo.get('light_p99_vs_alone'), 2)}x with one tenant (first come, first served).**",
        "",
        "| queueing | scenario | light p50 ms | light p99 ms | light p99 / alone | light 200/s "
        "| light 503 | heavy 200/s | heavy p99 ms | heavy 503 | avg batch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for queueing in QUEUEING:
        for scenario in SCENARIOS:
            p = summary.get(queueing, {}).get(scenario)
            if p is None:
                continue
            flood = scenario == "flood"
            lines.append(
                f"| {LABELS[queueing]} | {scenario} | {_f(p['light_p50_ms'])} | {_f(p['light_p99_ms'])} "
                f"| {_f(p.get('light_p99_vs_alone'), 2) if flood else '1'} | {_f(p['light_rps'])} "
                f"| {p['light_503']} | {_f(p['heavy_rps']) if flood else '-'} "
                f"| {_f(p['heavy_p99_ms']) if flood else '-'} | {p['heavy_503'] if flood else '-'} "
                f"| {_f(p['avg_batch_size'], 2)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from bench.run import machine, versions
    from bench.workloads import DEFAULT_CACHE, model_specs

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one round of short windows (a smoke run)")
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(model_specs()))
    parser.add_argument(
        "--light-fraction", type=float, default=0.2, help="light tenant's rate, x capacity (default 0.2)"
    )
    parser.add_argument("--light-rate", type=float, help="light tenant's rate in req/s instead")
    parser.add_argument(
        "--heavy-factor", type=float, default=10.0, help="heavy tenant's rate, x the light one's (default 10)"
    )
    parser.add_argument("--capacity-clients", type=int, help="closed-loop clients (default 2 x max batch)")
    parser.add_argument("--rounds", type=int, help="rounds, the servers taking turns (default 2; quick 1)")
    parser.add_argument("--duration", type=float, help="measured seconds per window (default 5; quick 1.5)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("--stem", help="result file names (default fairness, quick: fairness-quick)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="built model weights (reused)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = Plan(
        rounds=args.rounds or plan.rounds,
        warmup_s=plan.warmup_s,
        duration_s=args.duration or plan.duration_s,
        capacity_s=plan.capacity_s,
    )
    args.stem = args.stem or ("fairness-quick" if args.quick else "fairness")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "mode": "quick" if args.quick else "default",
        "command": " ".join(["python -m bench.fairness", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "versions": versions(),
        "plan": plan.__dict__,
    }
    log(f"machine: {meta['machine']['cores']} cores, load {meta['machine']['load_average']}")
    document: dict[str, Any] = {"meta": meta, **measure(args, plan)}
    document["summary"] = summarise(document["samples"])
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    meta["duration_s"] = time.time() - started
    meta["load_average_after"] = list(os.getloadavg())
    paths = write(document, args.out, args.stem, markdown)
    log(f"done in {meta['duration_s']:.0f}s: {', '.join(map(str, paths))}")
    print(paths[1].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
