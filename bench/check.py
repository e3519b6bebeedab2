"""Performance regression check: ratios measured in one short run, against stored floors.

    python -m bench.check [--margin 0.5] [--results results.json] [--update --runs 3]

Absolute req/s depend on the machine; a ratio of two figures measured in the same run on the
same machine does much less, so those are what is stored and checked (``bench/floors.json``):

* ``served_over_raw_32``: served req/s at 32 clients over the raw in-process pipeline's img/s
  (decode + pre-process + batched forward, the best configuration of a small grid). Higher is
  better: what the HTTP path, queue and batcher cost under load.
* ``latency_over_raw_1``: the 1-client p50 over one raw forward pass at batch 1 plus decode and
  pre-processing. Lower is better: what one request pays for the server around the model.

Each stored figure has a ``baseline`` (the median of ``--runs`` runs on the machine that wrote
it) and a ``noise`` (their relative spread). A figure fails when it is worse than its baseline
by more than the allowed margin: twice the recorded noise, or ``--margin`` when that is larger. CI runs
``--margin 0.5`` (a regression has to halve a ratio, or add half again to a latency, to fail:
gross regressions only, never the noise of a shared runner); on a quiet machine, ``make
bench-check`` without ``--margin`` checks against the noise itself (docs/PERFORMANCE.md).

A workload with a failing figure is measured once more and judged on its better figures: a
regression in the code shows in both runs, a neighbour that took a core for a minute (a CI stop
once read the 1-client p50 at 3.9 ms against 2.1-2.4 ms on the same tree) in one.
``--results`` checks a finished ``bench.run`` (its ``results.json``) instead of measuring.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import report
from bench.run import QUICK_PLAN, WORKLOADS, log, machine, run_workload
from bench.workloads import DEFAULT_CACHE, ROOT, model_specs, request_set, weights_for

FLOORS = ROOT / "bench" / "floors.json"
#: The models checked: serving overhead dominates the first, the shipped default is the second.
CHECKED = ("tiny_cnn", "efficientnet_lite0")
#: Short windows and one repeat, 1 and 32 clients only: about 40 s a workload on 2 cores.
CHECK_PLAN = replace(QUICK_PLAN, repeats=1)
#: A figure may be this many recorded noises worse than its baseline before it fails: three runs
#: underestimate the spread (at 1x, one check in three failed on an unchanged tree).
NOISE_FACTOR = 2.0
HIGHER = {"served_over_raw_32": True, "latency_over_raw_1": False}


def figures(summary: dict[str, Any]) -> dict[str, float]:
    """The checked ratios of one workload's summary (``report.summarise_workload``)."""
    raw = summary["raw"]
    closed = {int(clients): point for clients, point in summary["closed"].items()}  # JSON: str keys
    pipeline = raw["pipeline_ips"]["median"]
    forward1_ms = 1000.0 / raw["forward1_ips"]["median"]
    bound_ms = forward1_ms + raw["decode_ms"]["total_ms"]
    return {
        "served_over_raw_32": closed[32]["throughput_rps"]["median"] / pipeline,
        "latency_over_raw_1": closed[1]["p50_ms"]["median"] / bound_ms,
    }


def measure(cache: Path, names: Sequence[str] = CHECKED) -> dict[str, dict[str, float]]:
    """One short run of each of ``names``: its figures, by workload."""
    measured: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-check-") as out:
        for name in names:
            workload = replace(WORKLOADS[name], concurrency=(1, 32), open_fractions=())
            weights_for(model_specs()[workload.model], cache)
            request_set(workload.model, workload.images, workload.protocol)
            result = run_workload(workload, CHECK_PLAN, cache, Path(out))
            summary = report.summarise({"workloads": [result]})[name]
            measured[name] = figures(summary)
            log(f"{name}: {measured[name]}")
    return measured


def from_results(path: Path) -> dict[str, dict[str, float]]:
    summary = json.loads(path.read_text(encoding="utf-8"))["summary"]
    return {name: figures(summary[name]) for name in CHECKED if name in summary}


def compare(
    measured: dict[str, dict[str, float]], floors: dict[str, Any], margin: float
) -> tuple[list[str], list[str]]:
    """(every line of the report, the lines that fail)."""
    lines: list[str] = []
    failures: list[str] = []
    for name, stored in floors["workloads"].items():
        if name not in measured:
            failures.append(f"{name}: not measured")
            continue
        for figure, entry in stored.items():
            value, baseline = measured[name][figure], float(entry["baseline"])
            allowed = max(NOISE_FACTOR * float(entry["noise"]), margin)
            limit = baseline * (1 - allowed) if HIGHER[figure] else baseline * (1 + allowed)
            ok = value >= limit if HIGHER[figure] else value <= limit
            sign = ">=" if HIGHER[figure] else "<="
            line = (
                f"{'ok  ' if ok else 'FAIL'} {name} {figure} = {value:.3f} (needs {sign} {limit:.3f}: "
                f"baseline {baseline:.3f}, margin {allowed:.0%})"
            )
            lines.append(line)
            if not ok:
                failures.append(line)
    return lines, failures


def better(first: dict[str, float], second: dict[str, float]) -> dict[str, float]:
    """Each figure's better value of two runs of one workload."""
    return {figure: (max if HIGHER[figure] else min)(first[figure], second[figure]) for figure in first}


def failing_workloads(failures: list[str]) -> list[str]:
    """The checked workloads that failure lines (``FAIL name figure ...``, ``name: ...``) name."""
    named = {word.rstrip(":") for line in failures for word in line.split()[:2]}
    return [name for name in CHECKED if name in named]


def update(runs: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Floors from ``runs``: each figure's median and relative spread."""
    workloads: dict[str, Any] = {}
    for name in CHECKED:
        workloads[name] = {}
        for figure in HIGHER:
            values = [run[name][figure] for run in runs]
            middle = statistics.median(values)
            workloads[name][figure] = {
                "baseline": round(middle, 4),
                "noise": round((max(values) - min(values)) / middle, 4),
                "runs": [round(v, 4) for v in values],
            }
    return {
        "written": time.strftime("%Y-%m-%d"),
        "machine": {k: v for k, v in machine().items() if k in ("cores", "cpu_model")},
        "how": f"python -m bench.check --update --runs {len(runs)}",
        "workloads": workloads,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--margin", type=float, default=0.0, help="allowed relative drop (default: 2x the noise)"
    )
    parser.add_argument("--results", type=Path, help="check this bench.run results.json instead of measuring")
    parser.add_argument("--floors", type=Path, default=FLOORS, help=f"default {FLOORS.relative_to(ROOT)}")
    parser.add_argument("--update", action="store_true", help="measure --runs times and write the floors")
    parser.add_argument("--runs", type=int, default=3, help="runs for --update (default 3)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="built model weights (reused)")
    args = parser.parse_args(argv)
    if args.update:
        runs = [measure(args.cache) for _ in range(args.runs)]
        args.floors.write_text(json.dumps(update(runs), indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.floors}")
        return 0
    floors = json.loads(args.floors.read_text(encoding="utf-8"))
    measured = from_results(args.results) if args.results else measure(args.cache)
    lines, failures = compare(measured, floors, args.margin)
    again = [] if args.results else failing_workloads(failures)
    if again:
        log(f"measuring {', '.join(again)} once more before calling it a regression")
        remeasured = measure(args.cache, again)
        for name in again:
            measured[name] = better(measured[name], remeasured[name])
        lines, failures = compare(measured, floors, args.margin)
    print("\n".join(lines))
    if failures:
        print(f"\n{len(failures)} performance figure(s) regressed:\n" + "\n".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
