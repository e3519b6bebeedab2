"""Results to numbers people read: medians and spreads, ratios, targets, a markdown table, plots.

Everything here is a pure function of the results dictionary that :mod:`bench.run` builds
(``tests/bench`` checks it on a fixture), so a report can be re-rendered from a saved
``results.json`` without measuring again: ``python -m bench.report bench/results/results.json``.

A ``@shadow`` workload measured in the same run as its plain twin gets a "shadow cost" table:
the twin's and its own throughput and caller latencies at the same points, their ratios, and the
shadow copies compared and shed per request (:func:`shadow_cost`).

The ``@transports`` comparisons (the results' ``transports`` list, :mod:`bench.transports`) get a
"Transports" section: per transport, throughput at the most clients and latency at one client,
both as ratios to REST multipart, the server's CPU per answered request and the load generator's
(:func:`summarise_transports`), and a ``<stem>-transports.png`` plot.

The ``@cache`` comparisons (the results' ``cache`` list) get an "Output cache" section: per
model and clients, req/s, p50 and p99 with the cache off and on, their ratios (on / off), the
hit ratio and the share of inputs merged in flight (:func:`summarise_cache`).

Every served run's predictive-admission record (``served.admission``: inputs scored, mean
absolute error of the predicted answer time, share answered late, refusals by reason) is listed
in an "Admission predictions" table (:func:`admission_rows`).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from inference_engine.settings import BatchingSettings

#: Which targets apply to which workload (from the performance issue).
HEAVY = {"clip_vit_b32"}
LIGHT = {"tiny_cnn", "efficientnet_lite0", "efficientnet_lite0_torch", "efficientnet_lite0_onnx"}
SINGLE_REQUEST_SLACK_MS = 2.0
BATCH_FILL = 0.75  # "average batch size approaches max_batch_size": at least this fraction of it


def spread(values: Iterable[float | None]) -> dict[str, float]:
    """Median, min, max and the relative spread (max - min) / median of repeated runs."""
    data = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not data:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "spread": math.nan}
    median = statistics.median(data)
    return {
        "median": median,
        "min": min(data),
        "max": max(data),
        "spread": (max(data) - min(data)) / median if median else math.nan,
    }


def ratio(served: float, raw: float) -> float:
    return served / raw if raw and not math.isnan(raw) else math.nan


def _point_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "throughput_rps",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "avg_batch_size",
        "server_cpu_cores",
        "loadgen_cpu_cores",
        "loadgen_cpu_us_per_request",
        "queue_wait_ms",
        "preprocess_ms",
        "inference_ms",
    )
    out: dict[str, Any] = {key: spread(run.get(key, math.nan) for run in runs) for key in keys}
    if any("shadow" in run for run in runs):  # copies per answered request, by outcome
        for outcome in ("compared", "shed"):
            out[f"shadow_{outcome}_per_request"] = spread(
                run["shadow"][outcome] / run["requests"] if run.get("requests") else math.nan
                for run in runs
                if "shadow" in run
            )
    out["errors"] = sum(run.get("errors", 0) for run in runs)
    out["runs"] = len(runs)
    return out


def summarise_workload(workload: dict[str, Any]) -> dict[str, Any]:
    """Medians and spreads of every point, the raw ceiling, the ratios and the targets."""
    raw = workload["raw"]
    pass1, pass2 = raw["pass1"], raw["pass2"]
    pipeline = spread([raw["best_pipeline"]["ips"], *(p["ips"] for p in pass2.get("pipeline", []))])
    forward1 = spread([pass1["forward_ips"]["1"], pass2.get("forward_ips", {}).get("1", math.nan)])
    decode_ms = pass1["decode"]["total_ms"]
    closed = {int(p["clients"]): _point_summary(p["runs"]) for p in workload["served"]["closed"]}
    opened = {float(p["rate"]): _point_summary(p["runs"]) for p in workload["served"]["open"]}
    config = workload["model_yaml"]
    max_batch = int(config.get("max_batch_size") or 8)
    # Absent from model.yaml: the server's default (batching.max_batch_delay_ms), read from the
    # settings rather than repeated here.
    delay_ms = float(config.get("max_batch_delay_ms") or BatchingSettings().max_batch_delay_ms)
    ceiling = pipeline["median"]
    ratios = {c: ratio(s["throughput_rps"]["median"], ceiling) for c, s in closed.items()}
    bound_ms = 1000.0 / forward1["median"] + decode_ms + SINGLE_REQUEST_SLACK_MS
    targets: list[dict[str, Any]] = []

    def target(name: str, value: float, limit: float, met: bool, unit: str = "") -> None:
        targets.append({"target": name, "value": value, "limit": limit, "met": bool(met), "unit": unit})

    model = workload["model"]
    shadow = bool(workload.get("shadow"))
    images_default = workload["images"] == "photos640"
    if images_default and model in HEAVY:
        for clients in (8, 32):
            if clients in ratios:
                target(
                    f"served/raw at {clients} clients >= 0.95", ratios[clients], 0.95, ratios[clients] >= 0.95
                )
        if 32 in closed:
            p50, p99 = closed[32]["p50_ms"]["median"], closed[32]["p99_ms"]["median"]
            target("p99 <= 2 x p50 at 32 clients", p99 / p50, 2.0, p99 <= 2 * p50)
    # A shadow workload computes every request twice: its served/raw is the cost shown, not a target.
    if images_default and model in LIGHT and 32 in ratios and not shadow:
        target("served/raw at 32 clients >= 0.9", ratios[32], 0.9, ratios[32] >= 0.9)
    if 1 in closed:
        p50 = closed[1]["p50_ms"]["median"]
        target("1-client p50 <= raw forward(1) + decode + 2 ms", p50, bound_ms, p50 <= bound_ms, "ms")
        wait = closed[1]["queue_wait_ms"]["median"]
        target("1 client: batch wait <= max_batch_delay_ms", wait, delay_ms, wait <= delay_ms, "ms")
    if 32 in closed:
        batch = closed[32]["avg_batch_size"]["median"]
        target(
            f"32 clients: avg batch >= {BATCH_FILL} x max_batch_size",
            batch,
            BATCH_FILL * max_batch,
            batch >= BATCH_FILL * max_batch,
        )
    return {
        "name": workload["name"],
        "model": model,
        "images": workload["images"],
        "protocol": workload.get("protocol", "native"),  # results from before V2 workloads: native
        "shadow": shadow,
        "twin": workload.get("twin", workload["name"]),
        "shadow_counters": workload["served"].get("shadow", {}),
        "request_bytes": workload["served"].get("request", {}).get("mean_bytes", math.nan),
        "max_batch_size": max_batch,
        "max_batch_delay_ms": delay_ms,
        "raw": {
            "decode_ms": pass1["decode"],
            "forward_ips": pass1["forward_ips"],
            "forward1_ips": forward1,
            "single_ms": pass1.get("single_ms"),
            "pipeline_ips": pipeline,
            "pipeline_config": {
                k: raw["best_pipeline"].get(k) for k in ("threads", "batch", "workers", "overrides")
            },
        },
        "closed": closed,
        "open": opened,
        "ratios": ratios,
        "single_bound_ms": bound_ms,
        "cold_start_s": workload["served"]["cold_start_s"],
        "peak_rss_mb": workload["served"]["peak_rss_mb"],
        "targets": targets,
    }


def _matching(rate: float, rates: Iterable[float]) -> float | None:
    """The rate of ``rates`` equal to ``rate`` but for rounding, if any."""
    return next((r for r in rates if math.isclose(r, rate, rel_tol=1e-3)), None)


def shadow_cost(shadowed: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """A shadow workload against its plain twin at their common points: ``@shadow / plain`` ratios
    of throughput and of caller p50 and p99 (above 1: the latency the shadow costs callers)."""

    def ratios(mine: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
        return {
            key: ratio(mine[key]["median"], theirs[key]["median"])
            for key in ("throughput_rps", "p50_ms", "p99_ms")
        }

    opened = {}
    for rate, point in shadowed["open"].items():
        twin_rate = _matching(rate, plain["open"])
        if twin_rate is not None:
            opened[rate] = ratios(point, plain["open"][twin_rate])
    return {
        "twin": plain["name"],
        "closed": {
            c: ratios(p, plain["closed"][c]) for c, p in shadowed["closed"].items() if c in plain["closed"]
        },
        "open": opened,
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    summary = {w["name"]: summarise_workload(w) for w in results["workloads"]}
    for s in summary.values():
        if s["shadow"] and s["twin"] in summary:
            s["vs_twin"] = shadow_cost(s, summary[s["twin"]])
    return summary


#: How the report names each transport of :mod:`bench.transports`.
TRANSPORT_LABELS = {
    "rest_multipart": "REST multipart (/predict)",
    "rest_jpeg": "REST raw JPEG body (/predict)",
    "rest_v2_binary": "REST V2 binary tensors (/v2/.../infer)",
    "grpc": "gRPC ModelInfer",
}


def summarise_transports(entry: dict[str, Any]) -> dict[str, Any]:
    """One transport comparison: medians and spreads of every (clients, transport) point, the
    server's CPU milliseconds per answered request, and ratios to the baseline transport at the
    same clients (throughput, p50, p99, server CPU per request)."""
    served = entry["served"]
    baseline = served["baseline"]
    points: dict[int, dict[str, dict[str, Any]]] = {}
    for point in served["points"]:
        runs = point["runs"]
        summary = _point_summary(runs)
        summary["server_cpu_ms_per_request"] = spread(
            1000.0 * run["server_cpu_cores"] / run["throughput_rps"] if run.get("throughput_rps") else None
            for run in runs
        )
        points.setdefault(int(point["clients"]), {})[point["transport"]] = summary
    ratios: dict[int, dict[str, dict[str, float]]] = {}
    keys = ("throughput_rps", "p50_ms", "p99_ms", "server_cpu_ms_per_request")
    for clients, by_transport in points.items():
        base = by_transport.get(baseline)
        ratios[clients] = {
            name: {key: ratio(p[key]["median"], base[key]["median"]) if base else math.nan for key in keys}
            for name, p in by_transport.items()
        }
    return {
        "name": entry["name"],
        "model": entry["model"],
        "images": entry["images"],
        "baseline": baseline,
        "transports": served["transports"],
        "answers": served.get("answers", {}),
        "clients": sorted(points),
        "points": points,
        "ratios": ratios,
        "cold_start_s": served["cold_start_s"],
        "peak_rss_mb": served["peak_rss_mb"],
    }


def summarise_all_transports(results: dict[str, Any]) -> dict[str, Any]:
    return {entry["name"]: summarise_transports(entry) for entry in results.get("transports", [])}


#: The ``@cache`` comparison's variants, baseline first.
CACHE_BASELINE, CACHE_ON = "off", "on"


def summarise_cache(entry: dict[str, Any]) -> dict[str, Any]:
    """One output-cache comparison: medians and spreads of every (clients, variant) point, with
    the cache's hit ratio and merged share (cache on only), and ``on / off`` ratios of req/s,
    p50 and p99 at the same clients."""
    served = entry["served"]
    points: dict[int, dict[str, dict[str, Any]]] = {}
    for point in served["points"]:
        runs = point["runs"]
        summary = _point_summary(runs)
        for key in ("hit_ratio", "merged_share"):
            summary[key] = spread((run.get("cache") or {}).get(key) for run in runs)
        points.setdefault(int(point["clients"]), {})[point["variant"]] = summary
    ratios = {
        clients: {
            key: ratio(by[CACHE_ON][key]["median"], by[CACHE_BASELINE][key]["median"])
            for key in ("throughput_rps", "p50_ms", "p99_ms")
        }
        for clients, by in points.items()
        if CACHE_ON in by and CACHE_BASELINE in by
    }
    return {
        "name": entry["name"],
        "model": entry["model"],
        "images": entry["images"],
        "mix": served["mix"],
        "clients": sorted(points),
        "points": points,
        "ratios": ratios,
        "cold_start_s": served["cold_start_s"],
        "peak_rss_mb": served["peak_rss_mb"],
    }


def summarise_all_cache(results: dict[str, Any]) -> dict[str, Any]:
    return {entry["name"]: summarise_cache(entry) for entry in results.get("cache", [])}


def admission_rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(server, admission record)`` of every served run that recorded one, in report order:
    the workloads, the transport comparisons, then each output-cache server."""
    rows = [
        (w["name"], w["served"]["admission"])
        for w in results.get("workloads", [])
        if w["served"].get("admission")
    ]
    rows += [
        (t["name"], t["served"]["admission"])
        for t in results.get("transports", [])
        if t["served"].get("admission")
    ]
    for entry in results.get("cache", []):
        for label, record in entry["served"].get("admission", {}).items():
            rows.append((f"{entry['name']} (cache {label})", record))
    return rows


# -- markdown ------------------------------------------------------------------------------------


def _f(value: float, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _ms(s: dict[str, float]) -> str:
    return _f(s["median"], 1 if s["median"] < 100 else 0)


def _with_spread(s: dict[str, float], digits: int = 1) -> str:
    if math.isnan(s["median"]):
        return "-"
    return f"{s['median']:.{digits}f} ±{100 * s['spread'] / 2:.0f}%"


def _request_note(s: dict[str, Any]) -> str:
    """How the images travelled, where not as JPEG uploads: ``, V2 JSON tensors, 89 KB a request``."""
    if s["protocol"] != "v2":
        return ""
    size = s["request_bytes"]
    return ", V2 JSON tensors" + ("" if math.isnan(size) else f", {size / 1024:.0f} KB a request")


def _per_request(p: dict[str, Any]) -> str:
    """``0.98 / 0.02``: shadow copies compared / shed per answered request."""
    if "shadow_compared_per_request" not in p:
        return "-"
    return (
        f"{_f(p['shadow_compared_per_request']['median'], 2)} / "
        f"{_f(p['shadow_shed_per_request']['median'], 2)}"
    )


def _shadow_section(s: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """What a shadow workload's copies did, and what they cost callers next to the plain twin."""
    counts = "; ".join(
        f"{versions}: {_f(c.get('compared', math.nan), 0)} copies compared, "
        f"{_f(c.get('shed', math.nan), 0)} shed, "
        f"{_f(c.get('failed', math.nan), 0)} failed, top-1 agreement ratio "
        f"{_f(c.get('agreement_ratio', math.nan), 4)} (mean top-1 score difference "
        f"{_f(c.get('mean_score_difference', math.nan), 6)})"
        for versions, c in s["shadow_counters"].items()
    )
    twin = summary.get(s["twin"]) if "vs_twin" in s else None
    lines = [
        "",
        "Shadow: the model served as two identical versions, version 1 answering every request and "
        "a copy of each sent to version 2 in the background (shadows shed first under load). "
        f"Server counters at the end: {counts or 'none scraped'}.",
        "",
    ]
    if twin is None:
        lines.append(f"{s['twin']} was not measured in this run: no cost comparison.")
        return lines
    cost = s["vs_twin"]

    def both(mine: dict[str, Any], theirs: dict[str, Any], key: str) -> str:
        show = _ms if key.endswith("_ms") else (lambda x: _f(x["median"]))
        return f"{show(theirs[key])} → {show(mine[key])}"

    lines += [
        f"Shadow cost, {s['twin']} → {s['name']} at the same points (ratio: @shadow / plain):",
        "",
        "| clients | req/s | ratio | p50 ms | ratio | p99 ms | ratio | errors "
        "| copies compared / shed per answered request |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for clients, r in cost["closed"].items():
        mine, theirs = s["closed"][clients], twin["closed"][clients]
        lines.append(
            f"| {clients} | {both(mine, theirs, 'throughput_rps')} | {_f(r['throughput_rps'], 2)} "
            f"| {both(mine, theirs, 'p50_ms')} | {_f(r['p50_ms'], 2)} "
            f"| {both(mine, theirs, 'p99_ms')} | {_f(r['p99_ms'], 2)} "
            f"| {theirs['errors']} → {mine['errors']} | {_per_request(mine)} |"
        )
    if cost["open"]:
        lines += [
            "",
            "| offered req/s (open loop) | achieved req/s | p50 ms | ratio | p99 ms | ratio | errors "
            "| copies compared / shed per answered request |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for rate, r in cost["open"].items():
            mine = s["open"][rate]
            theirs = twin["open"][_matching(rate, twin["open"])]
            lines.append(
                f"| {_f(rate)} | {both(mine, theirs, 'throughput_rps')} "
                f"| {both(mine, theirs, 'p50_ms')} | {_f(r['p50_ms'], 2)} "
                f"| {both(mine, theirs, 'p99_ms')} | {_f(r['p99_ms'], 2)} "
                f"| {theirs['errors']} → {mine['errors']} | {_per_request(mine)} |"
            )
    elif s["open"]:
        lines += ["", f"(open-loop rates differ from {s['twin']}'s: no open-loop comparison)"]
    return lines


def _transport_section(results: dict[str, Any]) -> list[str]:
    """The transport comparisons: one table per model, the clients named once."""
    compared = summarise_all_transports(results)
    if not compared:
        return []
    clients_used = results["meta"].get("transport_clients") or next(
        {name: t["description"] for name, t in c["transports"].items()} for c in compared.values()
    )
    lines = [
        "",
        "## Transports",
        "",
        "The same server process, model and JPEGs over each transport, in a closed loop with a "
        "connection per client (one HTTP/1.1 keep-alive connection; for gRPC one channel, its own "
        "HTTP/2 connection), every request serialised before the run; the transports take turns "
        "within each point. Ratios are to the first row at the same clients (for p50, p99 and CPU "
        "per request, below 1 is better). Server CPU: milliseconds of server-process CPU per "
        "answered request; load generator: the suite's whole process (it shares the cores).",
        "",
    ]
    lines += [f"- {TRANSPORT_LABELS.get(name, name)}: {text}" for name, text in clients_used.items()]
    for c in compared.values():
        hi, lo = max(c["clients"]), min(c["clients"])
        answers = c["answers"]
        agreed = ""
        if answers:
            index, score = next(iter(answers.values()))["index"], next(iter(answers.values()))["score"]
            agreed = f" Every transport's top-1 for image 0: class {index}, p = {_f(score, 4)}."
        lines += [
            "",
            f"### {c['model']} ({c['images']}): transports",
            "",
            f"One server (cold start {_f(c['cold_start_s'])} s, "
            f"peak RSS {_f(c['peak_rss_mb'], 0)} MB).{agreed}",
            "",
            f"| transport | request KB | req/s @{hi} | ratio | p50 / p99 ms @{hi} | p50 ms @{lo} | ratio "
            f"| p99 ms @{lo} | ratio | server CPU ms/req @{hi} (@{lo}) | load gen µs/req @{hi} (@{lo}) "
            "| errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        order = [c["baseline"], *(t for t in c["transports"] if t != c["baseline"])]
        for name in order:
            top, one = c["points"].get(hi, {}).get(name), c["points"].get(lo, {}).get(name)
            if top is None or one is None:
                continue
            r_top, r_one = c["ratios"][hi][name], c["ratios"][lo][name]
            errors = top["errors"] + (one["errors"] if lo != hi else 0)
            lines.append(
                f"| {TRANSPORT_LABELS.get(name, name)} "
                f"| {_f(c['transports'][name]['request_bytes'] / 1024, 1)} "
                f"| {_with_spread(top['throughput_rps'])} | {_f(r_top['throughput_rps'], 2)} "
                f"| {_ms(top['p50_ms'])} / {_ms(top['p99_ms'])} "
                f"| {_f(one['p50_ms']['median'], 2)} | {_f(r_one['p50_ms'], 2)} "
                f"| {_f(one['p99_ms']['median'], 2)} | {_f(r_one['p99_ms'], 2)} "
                f"| {_f(top['server_cpu_ms_per_request']['median'], 2)} "
                f"({_f(one['server_cpu_ms_per_request']['median'], 2)}) "
                f"| {_f(top['loadgen_cpu_us_per_request']['median'], 0)} "
                f"({_f(one['loadgen_cpu_us_per_request']['median'], 0)}) "
                f"| {errors} |"
            )
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The headline table, then one section per workload, then the transport comparisons."""
    meta = results["meta"]
    summary = results.get("summary") or summarise(results)
    m, v = meta["machine"], meta["versions"]
    lines = [
        f"# Benchmark results ({meta['mode']} run, {meta['started']})",
        "",
        f"Machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_gb']} GiB; load average before "
        f"{', '.join(f'{x:.2f}' for x in m['load_average'])}, after "
        f"{', '.join(f'{x:.2f}' for x in meta.get('load_average_after', []))}. "
        f"Python {v['python']}, torch {v['torch']}, onnxruntime {v['onnxruntime']}, numpy {v['numpy']}, "
        f"Pillow {v['pillow']}, uvicorn {v['uvicorn']}, uvloop {v['uvloop']}, httptools {v['httptools']}"
        + "".join(f", {name} {v[name]}" for name in ("grpcio", "tritonclient") if name in v)
        + ". "
        f"Run took {meta.get('duration_s', 0) / 60:.1f} min.",
        "",
        f"Load generator: {meta['load_generator']}. Server: {meta['server']}. Every point: "
        f"{meta['plan']['repeats']} runs (interleaved sweeps) of {meta['plan']['duration_s']:g} s "
        f"({meta['plan']['heavy_duration_s']:g} s for ViT) after {meta['plan']['warmup_s']:g} s warm-up; "
        "medians, ± half the min-max spread.",
    ]
    if summary:
        lines += [
            "",
            "| workload | raw pipeline img/s | served req/s @1 / 8 / 32 / 64 clients | served/raw @8 / @32 "
            "| p50 / p99 ms @32 | 1-client p50 ms (bound) | avg batch @32 (max) | server CPU @32 "
            "| peak RSS MB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
    for s in summary.values():
        closed = s["closed"]

        def rps(c: int, closed: dict[int, Any] = closed) -> str:
            return _f(closed[c]["throughput_rps"]["median"]) if c in closed else "-"

        c32 = closed.get(32)
        lines.append(
            f"| {s['name']} | {_with_spread(s['raw']['pipeline_ips'])} "
            f"| {rps(1)} / {rps(8)} / {rps(32)} / {rps(64)} "
            f"| {_f(s['ratios'].get(8, math.nan), 2)} / {_f(s['ratios'].get(32, math.nan), 2)} "
            f"| {_ms(c32['p50_ms']) if c32 else '-'} / {_ms(c32['p99_ms']) if c32 else '-'} "
            f"| {_ms(closed[1]['p50_ms']) if 1 in closed else '-'} ({_f(s['single_bound_ms'])}) "
            f"| {_f(c32['avg_batch_size']['median'], 2) if c32 else '-'} ({s['max_batch_size']}) "
            f"| {_f(c32['server_cpu_cores']['median'], 2) if c32 else '-'} | {_f(s['peak_rss_mb'], 0)} |"
        )
    if summary:
        lines += [
            "",
            "## Targets",
            "",
            "| workload | target | measured | limit | met |",
            "| --- | --- | --- | --- | --- |",
        ]
    for s in summary.values():
        for t in s["targets"]:
            lines.append(
                f"| {s['name']} | {t['target']} | {_f(t['value'], 2)}{t['unit']} "
                f"| {_f(t['limit'], 2)}{t['unit']} "
                f"| {'yes' if t['met'] else '**no**'} |"
            )
    for s in summary.values():
        raw = s["raw"]
        d = raw["decode_ms"]
        fwd = ", ".join(f"{b}: {_f(x)}" for b, x in raw["forward_ips"].items())
        cfg = raw["pipeline_config"]
        lines += [
            "",
            f"## {s['name']} ({s['images']}{_request_note(s)})",
            "",
            f"Raw: decode {_f(d['decode_ms'], 2)} ms/img "
            f"(full-size decode {_f(d['decode_full_ms'], 2)}), "
            f"pre-processing {_f(d['preprocess_ms'], 2)} ms/img; forward img/s by batch {{{fwd}}}; "
            f"one image at a time {_f(raw['single_ms'])} ms; "
            f"best pipeline {_with_spread(raw['pipeline_ips'])} img/s "
            f"(batch {cfg['batch']}, {cfg['workers']} decode threads, intra-op threads "
            f"{cfg['threads'] or cfg['overrides'].get('intra_op_threads', 'default')}). "
            f"Cold start {_f(s['cold_start_s'])} s.",
            "",
            "| clients | req/s | served/raw | p50 ms | p95 ms | p99 ms | max ms | errors | avg batch "
            "| queue wait ms | server CPU | load gen CPU (µs/req) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for clients, p in s["closed"].items():
            lines.append(
                f"| {clients} | {_with_spread(p['throughput_rps'])} | {_f(s['ratios'][clients], 2)} "
                f"| {_ms(p['p50_ms'])} | {_ms(p['p95_ms'])} | {_ms(p['p99_ms'])} | {_ms(p['max_ms'])} "
                f"| {p['errors']} "
                f"| {_f(p['avg_batch_size']['median'], 2)} | {_f(p['queue_wait_ms']['median'], 1)} "
                f"| {_f(p['server_cpu_cores']['median'], 2)} | {_f(p['loadgen_cpu_cores']['median'], 2)} "
                f"({_f(p['loadgen_cpu_us_per_request']['median'], 0)}) |"
            )
        if s["open"]:
            lines += [
                "",
                "| offered req/s (open loop) | achieved req/s | p50 ms | p95 ms | p99 ms | max ms | errors "
                "| avg batch |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for rate, p in s["open"].items():
                lines.append(
                    f"| {_f(rate)} | {_with_spread(p['throughput_rps'])} | {_ms(p['p50_ms'])} "
                    f"| {_ms(p['p95_ms'])} | {_ms(p['p99_ms'])} | {_ms(p['max_ms'])} | {p['errors']} "
                    f"| {_f(p['avg_batch_size']['median'], 2)} |"
                )
        if s["shadow"]:
            lines += _shadow_section(s, summary)
    lines += _transport_section(results)
    lines += _cache_section(results)
    lines += _admission_section(results)
    return "\n".join(lines) + "\n"


def _pct(value: float | None, digits: int = 0) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.{digits}f}%"


def _cache_section(results: dict[str, Any]) -> list[str]:
    """The output-cache comparisons: one table per model."""
    compared = summarise_all_cache(results)
    if not compared:
        return []
    mix = next(iter(compared.values()))["mix"]
    lines = [
        "",
        "## Output cache on a Zipf mix",
        "",
        f"{mix['distinct']} distinct 640x480 photos ({mix['images']}: crops, flips and resizes of the "
        f"scikit-image photos) in a Zipf mix (exponent {_f(mix['zipf_s'], 2)}, seed {mix['seed']}), each "
        "client its own stream of independent draws, to two servers side by side: `cache: {enabled: "
        "true, merge_in_flight: true}` in `model.yaml` (on) and neither (off). The servers take turns "
        "at each point and get the same stretch of the mix; every point continues it where the last "
        "left off. Ratio: on / off. Hit ratio: cache hits over lookups in the window (the cache fills "
        "from empty with the server, so the first points include its filling); merged: inputs that "
        "shared an identical input's forward pass in flight, over lookups. An unbounded cache, empty "
        f"at the start, would hit {_pct(mix['unbounded_hit_ratio'], 1)} of the whole mix.",
    ]
    for c in compared.values():
        cold, rss = c["cold_start_s"], c["peak_rss_mb"]
        lines += [
            "",
            f"### {c['model']} ({c['images']}): output cache",
            "",
            f"Cold start off / on {_f(cold.get(CACHE_BASELINE))} / {_f(cold.get(CACHE_ON))} s, peak RSS "
            f"{_f(rss.get(CACHE_BASELINE), 0)} / {_f(rss.get(CACHE_ON), 0)} MB.",
            "",
            "| clients | req/s off | req/s on | ratio | p50 ms off → on | ratio | p99 ms off → on | ratio "
            "| hit ratio | merged | errors off / on |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for clients in c["clients"]:
            by = c["points"][clients]
            off, on = by.get(CACHE_BASELINE), by.get(CACHE_ON)
            if off is None or on is None:
                continue
            r = c["ratios"][clients]
            lines.append(
                f"| {clients} | {_with_spread(off['throughput_rps'])} | {_with_spread(on['throughput_rps'])} "
                f"| {_f(r['throughput_rps'], 2)} "
                f"| {_ms(off['p50_ms'])} → {_ms(on['p50_ms'])} | {_f(r['p50_ms'], 2)} "
                f"| {_ms(off['p99_ms'])} → {_ms(on['p99_ms'])} | {_f(r['p99_ms'], 2)} "
                f"| {_f(on['hit_ratio']['median'], 3)} | {_f(on['merged_share']['median'], 3)} "
                f"| {off['errors']} / {on['errors']} |"
            )
    return lines


def _admission_section(results: dict[str, Any]) -> list[str]:
    """Predictive admission's record on every served run: how far its predictions were off."""
    rows = admission_rows(results)
    if not rows:
        return []
    lines = [
        "",
        "## Admission predictions",
        "",
        "Predictive admission (the default, `batching.admission: predictive`) predicts each input's "
        "answer time before queueing it. Per server, over its whole run (warm-ups and every point "
        "included), from `/metrics`: admitted inputs scored against their prediction, the mean of "
        "|answered - predicted| (`inference_engine_admission_prediction_error_seconds` sum / count), "
        "the share answered later than predicted, and inputs refused before queueing. Requests carried "
        "the server's default deadline (30 s), so a refusal for the deadline is not expected here.",
        "",
        "| server | inputs scored | mean abs error ms | answered late | refused: deadline / queue full |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, record in rows:
        refused = record.get("refused") or {}
        lines.append(
            f"| {name} | {_f(record.get('predictions'), 0)} | {_f(record.get('mean_error_ms'), 2)} "
            f"| {_pct(record.get('late_share'))} "
            f"| {_f(refused.get('deadline', 0.0), 0)} / {_f(refused.get('queue_full', 0.0), 0)} |"
        )
    return lines


# -- plots ---------------------------------------------------------------------------------------


def _plain_numbers(ax: Any) -> None:
    """Log axes labelled 1, 2, 4... and 10, 100, not 2^0 and 10^1."""
    from matplotlib.ticker import FuncFormatter

    label = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(label)
    ax.yaxis.set_major_formatter(label)


def plot(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """``<stem>-throughput.png`` (throughput vs concurrency, raw ceilings dashed) and
    ``<stem>-latency.png`` (latency percentiles vs offered load)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results.get("summary") or summarise(results)
    paths = plot_transports(results, out, stem)
    if not summary:
        return paths
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=90)
    for index, s in enumerate(summary.values()):
        colour = f"C{index}"
        clients = sorted(s["closed"])
        ax.errorbar(
            clients,
            [s["closed"][c]["throughput_rps"]["median"] for c in clients],
            yerr=[
                [
                    s["closed"][c]["throughput_rps"]["median"] - s["closed"][c]["throughput_rps"]["min"]
                    for c in clients
                ],
                [
                    s["closed"][c]["throughput_rps"]["max"] - s["closed"][c]["throughput_rps"]["median"]
                    for c in clients
                ],
            ],
            marker="o",
            color=colour,
            label=s["name"],
            capsize=3,
        )
        ax.axhline(s["raw"]["pipeline_ips"]["median"], color=colour, linestyle="--", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_numbers(ax)
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel("requests / s (dashed: raw in-process pipeline)")
    ax.set_title("Served throughput vs concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out / f"{stem}-throughput.png")
    fig.savefig(paths[-1])
    plt.close(fig)

    with_open = [s for s in summary.values() if s["open"]]
    if with_open:
        fig, axes = plt.subplots(
            1, len(with_open), figsize=(3.2 * len(with_open), 3.4), dpi=90, squeeze=False
        )
        for ax, s in zip(axes[0], with_open, strict=True):
            rates = sorted(s["open"])
            for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
                ax.plot(rates, [s["open"][r][key]["median"] for r in rates], style, label=key[:-3])
            ax.set_title(s["name"], fontsize=8)
            ax.set_xlabel("offered req/s (open loop)", fontsize=8)
            ax.set_yscale("log")
            _plain_numbers(ax)
            ax.grid(True, which="both", alpha=0.3)
            ax.tick_params(labelsize=7)
        axes[0][0].set_ylabel("latency ms")
        axes[0][0].legend(fontsize=7)
        fig.suptitle("Latency percentiles vs offered load", fontsize=9)
        fig.tight_layout()
        paths.append(out / f"{stem}-latency.png")
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths


def plot_transports(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """``<stem>-transports.png`` (``transports.png`` for the stem ``transports``): each transport's
    throughput at the most clients and its 1-client p50 and p99 as ratios to the baseline's, a bar
    per transport, a group per model (nothing without transport comparisons)."""
    compared = summarise_all_transports(results)
    if not compared:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(t for c in compared.values() for t in c["transports"]))
    width = 0.8 / len(names)
    fig, (top, one) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=90)
    for index, name in enumerate(names):
        xs, rps, rps_err, p50, p99 = [], [], [[], []], [], []
        for x, c in enumerate(compared.values()):
            hi, lo = max(c["clients"]), min(c["clients"])
            point = c["points"].get(hi, {}).get(name)
            base = c["points"].get(hi, {}).get(c["baseline"])
            if point is None or base is None or name not in c["ratios"].get(lo, {}):
                continue
            xs.append(x + (index - (len(names) - 1) / 2) * width)
            t, b = point["throughput_rps"], base["throughput_rps"]["median"]
            rps.append(t["median"] / b)
            rps_err[0].append((t["median"] - t["min"]) / b)
            rps_err[1].append((t["max"] - t["median"]) / b)
            p50.append(c["ratios"][lo][name]["p50_ms"])
            p99.append(c["ratios"][lo][name]["p99_ms"])
        label = TRANSPORT_LABELS.get(name, name)
        top.bar(xs, rps, width, yerr=rps_err, capsize=2, color=f"C{index}", label=label)
        one.bar(xs, p50, width, color=f"C{index}", label=label)
        one.plot(xs, p99, "k_", markersize=10)
    clients = [f"{c['model']}\n@{max(c['clients'])} clients" for c in compared.values()]
    top.set_xticks(range(len(compared)), clients, fontsize=8)
    top.set_ylabel("req/s, ratio (whiskers: min-max of runs)", fontsize=8)
    top.set_title("Throughput", fontsize=9)
    single = [f"{c['model']}\n@{min(c['clients'])} client" for c in compared.values()]
    one.set_xticks(range(len(compared)), single, fontsize=8)
    one.set_ylabel("latency, ratio (bar: p50, dash: p99)", fontsize=8)
    one.set_title("Latency", fontsize=9)
    for ax in (top, one):
        ax.axhline(1.0, color="grey", linewidth=1)
        ax.grid(True, axis="y", alpha=0.3)
        ax.tick_params(labelsize=7)
    one.legend(fontsize=7, loc="lower right")
    baseline = TRANSPORT_LABELS.get(next(iter(compared.values()))["baseline"], "the baseline")
    fig.suptitle(f"Transports on one server, model and image set: ratios to {baseline}", fontsize=9)
    fig.tight_layout()
    path = out / ("transports.png" if stem == "transports" else f"{stem}-transports.png")
    fig.savefig(path)
    plt.close(fig)
    return [path]


def _jsonable(value: Any) -> Any:
    """JSON with integer keys as strings, NaN as null (strict JSON readers refuse NaN), and floats
    to 5 significant digits (the measurements are not more precise; the file stays small)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else float(f"{value:.5g}")
    return value


#: What :func:`write` adds to a results document, recomputed whenever it is read.
SUMMARIES = ("summary", "transport_summary", "cache_summary")


def write(results: dict[str, Any], out: Path, stem: str) -> list[Path]:
    """``<stem>.json``, ``<stem>.md`` and the plots under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    document = _jsonable({**results, "summary": summarise(results)})
    if results.get("transports"):
        document["transport_summary"] = _jsonable(summarise_all_transports(results))
    if results.get("cache"):
        document["cache_summary"] = _jsonable(summarise_all_cache(results))
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(document, indent=1) + "\n")
    # Rendered from what was saved, so that re-rendering the JSON later gives the same report.
    saved = {key: value for key, value in document.items() if key not in SUMMARIES}
    md_path = out / f"{stem}.md"
    md_path.write_text(markdown(saved))
    return [json_path, md_path, *plot(saved, out, stem)]


def load_results(path: Path) -> dict[str, Any]:
    """A saved ``results.json``, with its summary recomputed (keys back to numbers)."""
    results: dict[str, Any] = json.loads(path.read_text())
    for key in SUMMARIES:
        results.pop(key, None)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m bench.report RESULTS.json  (re-renders the markdown and plots beside it)")
        return 2
    path = Path(args[0])
    for written in write(load_results(path), path.parent, path.stem):
        print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
