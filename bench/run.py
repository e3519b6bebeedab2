"""The benchmark suite: served throughput and latency as ratios of the raw model, in one run.

    python -m bench.run [--quick] [--workloads tiny_cnn efficientnet_lite0 ...] [--out bench/results]

For each workload (a model on an image set, sent as JPEG uploads or as V2 JSON tensors, see
:data:`WORKLOADS`):

1. **raw, pass 1** (:mod:`bench.raw`, its own process): decode and pre-processing cost per
   image, forward throughput at batch 1..32, one-image-at-a-time latency, and the best
   in-process pipeline over a small grid (intra-op threads x decode threads x batch size).
2. **served** (:mod:`bench.server`, :mod:`bench.load`): the real server as a process on
   loopback; closed loop at 1..64 clients, then open loop at fixed Poisson arrival rates
   (fractions of the 32-client throughput just measured). Every point runs ``--repeats`` times,
   the repeats interleaved (a whole sweep, then the sweep again) so slow drifts in background
   load spread over all points instead of biasing one.
3. **raw, pass 2**: the pipeline's best configuration and batch-1 forward again, so the
   ceiling too is a median of two runs taken around the served measurements.

Results: ``results.json`` (everything, with the machine, versions and settings), ``results.md``
(the tables) and ``throughput.png`` / ``latency.png`` under ``--out``. ``--quick`` measures
fewer workloads and points with shorter windows (a smoke run, not numbers to quote).

The ``@v2`` workloads (not in the default set) send the same images pre-processed, as Open
Inference Protocol V2 JSON tensors, at the points of their native twin, against a raw ceiling
of the same model and images (measured again in their turn); ``--quick --workloads tiny_cnn
tiny_cnn@v2`` compares the two in about two minutes.

The ``@shadow`` workloads (not in the default set either) serve the same model as two identical
versions, ``<name>/1/`` and ``<name>/2/``, with ``traffic: {"1": 100}`` and ``shadow: {"2": 100}``:
version 1 answers every request and a copy goes to version 2 in the background, compared with
the answer, the caller never waiting for it. Same closed-loop points as the plain twin and, when
the twin ran earlier in the same run (it is run first when both are named), the twin's open-loop
rates, so the report's "shadow cost" table reads as the caller's price of mirroring every
request (``--quick --workloads tiny_cnn tiny_cnn@shadow``: about two minutes). Each window also
counts the copies compared and shed (shadows shed first under load), and at the end the
server's shadow counters (copies by outcome, top-1 agreement ratio: 1.0 for identical weights)
are recorded.

The ``@transports`` workloads (EfficientNet-Lite0 and the tiny CNN; in the default set, and
EfficientNet's in ``--quick``) compare transports on one server process, one model and the same
JPEGs (:mod:`bench.transports`): REST multipart and raw-body uploads to ``/predict``, REST V2 with
the binary tensor extension and gRPC ``ModelInfer``, each at 1 and 32 clients in a closed loop,
the transports interleaved. No raw passes: the ratios are to REST multipart. They go to the
results' ``transports`` list and the report's "Transports" section (``--quick --workloads
efficientnet_lite0@transports``: about a minute).

The ``@cache`` workloads (the tiny CNN and EfficientNet-Lite0 in the default set, the tiny CNN's
in ``--quick``) measure the output cache where it helps: 500 distinct photos
(``variants500``, :mod:`bench.workloads`) sent in a Zipf mix (exponent 1.1, a fixed seed), each
client its own independent stream of draws, to two servers started side by side: one with
``cache: {enabled: true, merge_in_flight: true}`` in ``model.yaml``, one without. Both get the
same requests at 8 and 32 clients in a closed loop, the servers taking turns (A B, then B A) and
every window continuing the mix where the previous point left off. Per point: req/s, p50 and p99
of each, their ratio (cache on / off), and from ``/metrics`` the cache's hit ratio (hits over
lookups) and the share of inputs merged into an identical one in flight. The cache starts empty
with the server, so the first windows' hit ratio includes its filling. No raw passes. They go to
the results' ``cache`` list and the report's "Output cache" section (``--quick --workloads
tiny_cnn@cache``: about 40 s).

After every served run the server's predictive-admission record is read from ``/metrics``:
admitted inputs scored, the mean absolute error of their predicted answer time and the share
answered later than predicted, and the inputs refused by reason (the report's "Admission
predictions" table; per window, ``admission`` in each point).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import load, report, transports
from bench.server import ServedModel, admission_totals, parse_metrics, shadow_counters, window_metrics
from bench.workloads import (
    CACHE_OVERRIDES,
    DEFAULT_CACHE,
    ROOT,
    SHADOW_OVERRIDES,
    VARIANTS,
    ZIPF_S,
    ZIPF_SEED,
    ApiProtocol,
    ModelSpec,
    image_set,
    model_specs,
    request_set,
    weights_for,
    write_repository,
    zipf_expected_hit_ratio,
    zipf_sequence,
)

RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Workload:
    """A model on an image set, how requests carry the images, how long points run and which it skips."""

    name: str
    model: str
    images: str
    heavy: bool = False  # a slow model: longer windows so that each point has enough answers
    concurrency: tuple[int, ...] = (1, 4, 8, 16, 32, 64)
    open_fractions: tuple[float, ...] = (0.3, 0.6, 0.9)
    protocol: ApiProtocol = "native"  # "v2": pre-processed tensors as V2 JSON (bench.workloads)
    shadow: bool = False  # two identical versions, every request copied to version 2 (SHADOW_OVERRIDES)
    transports: bool = False  # the same images over REST and gRPC (bench.transports), no raw passes
    cache: bool = False  # a Zipf mix to a server with the output cache and one without, no raw passes
    workers: int = 1  # server processes on the port (server.workers)

    @property
    def twin(self) -> str:
        """The plain workload this one is a variant of (itself for a plain one)."""
        name = self.name
        for variant in ("@v2", "@shadow", "@transports", "@cache", "@workers"):
            name = name.partition(variant)[0]
        return name

    @property
    def comparison(self) -> bool:
        """Servers compared with each other, no raw passes (``@transports``, ``@cache``)."""
        return self.transports or self.cache

    @property
    def versions(self) -> tuple[int, ...]:
        """Numbered version folders of the served model (none: the plain layout)."""
        return (1, 2) if self.shadow else ()

    def server_env(self, spec: ModelSpec) -> dict[str, str]:
        """The server's ``IE_*`` variables: the model's, and the workers this workload asks for."""
        workers = {"IE_SERVER__WORKERS": str(self.workers)} if self.workers > 1 else {}
        return {**spec.settings_env, **workers}

    @property
    def overrides(self) -> dict[str, Any]:
        """Keys laid over the model's ``model.yaml`` for this workload's server."""
        return copy.deepcopy(SHADOW_OVERRIDES) if self.shadow else {}


NATIVE_WORKLOADS = (
    Workload("tiny_cnn", "tiny_cnn", "photos640"),
    Workload("efficientnet_lite0", "efficientnet_lite0", "photos640"),
    Workload("efficientnet_lite0_torch", "efficientnet_lite0_torch", "photos640"),
    Workload("efficientnet_lite0_onnx", "efficientnet_lite0_onnx", "photos640"),
    Workload("clip_vit_b32", "clip_vit_b32", "photos640", heavy=True, concurrency=(1, 4, 8, 32, 64)),
    Workload(
        "efficientnet_lite0_onnx@12mp",
        "efficientnet_lite0_onnx",
        "photos12mp",
        concurrency=(1, 8, 32),
        open_fractions=(0.6,),
    ),
)
#: V2 twins: the same model, images and points, the images sent as V2 JSON tensors (about 90 KB
#: a request for the tiny CNN's 56 px input, 1.4 MB for EfficientNet's 224 px).
V2_WORKLOADS = tuple(
    replace(w, name=f"{w.name}@v2", protocol="v2")
    for w in NATIVE_WORKLOADS
    if w.name in ("tiny_cnn", "efficientnet_lite0")
)
#: Shadow twins: the same model, images and points, served as two identical versions with every
#: request copied to version 2; the cost of mirroring is the difference to the plain twin.
SHADOW_WORKLOADS = tuple(
    replace(w, name=f"{w.name}@shadow", shadow=True)
    for w in NATIVE_WORKLOADS
    if w.name in ("tiny_cnn", "efficientnet_lite0")
)
#: Transport comparisons: the model's JPEGs over REST (multipart, raw body, V2 binary) and gRPC,
#: on one server, at 1 client (latency) and 32 (throughput).
TRANSPORT_WORKLOADS = tuple(
    replace(w, name=f"{w.name}@transports", transports=True, concurrency=(1, 32), open_fractions=())
    for w in NATIVE_WORKLOADS
    if w.name in ("efficientnet_lite0", "tiny_cnn")
)
#: Output cache on and off: 500 distinct photos in a Zipf mix, at 8 and 32 clients in a closed loop.
CACHE_WORKLOADS = tuple(
    replace(w, name=f"{w.name}@cache", images=VARIANTS, cache=True, concurrency=(8, 32), open_fractions=())
    for w in NATIVE_WORKLOADS
    if w.name in ("tiny_cnn", "efficientnet_lite0")
)
#: Two server processes on the port (``server.workers: 2``) for the model one process's GIL holds
#: back; its raw ceiling is the plain twin's (the same pipeline in one process, all cores).
WORKERS_WORKLOADS = tuple(
    replace(w, name=f"{w.name}@workers2", workers=2) for w in NATIVE_WORKLOADS if w.name == "tiny_cnn"
)
WORKLOADS = {
    w.name: w
    for w in (
        *NATIVE_WORKLOADS,
        *V2_WORKLOADS,
        *SHADOW_WORKLOADS,
        *TRANSPORT_WORKLOADS,
        *CACHE_WORKLOADS,
        *WORKERS_WORKLOADS,
    )
}
DEFAULT_WORKLOADS = tuple(
    w.name for w in (*NATIVE_WORKLOADS, *TRANSPORT_WORKLOADS, *CACHE_WORKLOADS, *WORKERS_WORKLOADS)
)
QUICK_WORKLOADS = ("tiny_cnn", "efficientnet_lite0", "efficientnet_lite0@transports", "tiny_cnn@cache")


@dataclass(frozen=True)
class Plan:
    """How long things run: the suite's settings, recorded in the results."""

    warmup_s: float
    duration_s: float
    heavy_duration_s: float
    repeats: int
    raw_seconds: float
    quick: bool

    def duration(self, workload: Workload) -> float:
        return self.heavy_duration_s if workload.heavy else self.duration_s

    def concurrency(self, workload: Workload) -> tuple[int, ...]:
        if self.quick:
            return tuple(c for c in workload.concurrency if c in (1, 8, 32))
        return workload.concurrency

    def open_fractions(self, workload: Workload) -> tuple[float, ...]:
        return workload.open_fractions[-1:] if self.quick else workload.open_fractions


DEFAULT_PLAN = Plan(
    warmup_s=1.5, duration_s=4.0, heavy_duration_s=8.0, repeats=2, raw_seconds=1.5, quick=False
)
QUICK_PLAN = Plan(warmup_s=1.0, duration_s=2.5, heavy_duration_s=5.0, repeats=2, raw_seconds=0.8, quick=True)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- machine facts ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory and load: what the numbers were measured on."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()),
    }


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in (
        "inference-engine",
        "torch",
        "onnxruntime",
        "numpy",
        "pillow",
        "transformers",
        "fastapi",
        "uvicorn",
        "uvloop",
        "httptools",
        "grpcio",
        "protobuf",
        "tritonclient",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


# -- raw ---------------------------------------------------------------------------------------


def raw_process(args: list[str], cache: Path) -> dict[str, Any]:
    """Run ``bench.raw`` in its own process and return its JSON."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    command = [
        sys.executable,
        "-W",
        "ignore",
        "-m",
        "bench.raw",
        "--cache",
        str(cache),
        "--json",
        str(out),
        *args,
    ]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        result: dict[str, Any] = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    return result


def pipeline_grid(workload: Workload, max_batch: int) -> list[list[str]]:
    """Pipeline configurations to try: the ceiling is the best of them.

    Intra-op threads 1 and 2 (torch switches in-process; ONNX Runtime needs a session each, so a
    ``bench.raw`` process each), decode threads 1 and 2, batch the model's ``max_batch_size``
    and half of it. The heavy model only with 2 intra-op threads: 1 halves its speed.
    """
    batches = sorted({max_batch, max(1, max_batch // 2)})
    base = ["--pipeline-batches", *map(str, batches), "--workers", "1", "2"]
    if model_specs()[workload.model].config.get("backend") == "onnx":
        return [[*base, "--overrides", json.dumps({"intra_op_threads": t})] for t in (1, 2)]
    return [[*base, "--threads", *(["2"] if workload.heavy else ["1", "2"])]]


def raw_seconds(workload: Workload, plan: Plan) -> str:
    return str(2 * plan.raw_seconds if workload.heavy else plan.raw_seconds)


def raw_pass1(workload: Workload, plan: Plan, cache: Path, max_batch: int) -> dict[str, Any]:
    common = [
        "--model",
        workload.model,
        "--images",
        workload.images,
        "--seconds",
        raw_seconds(workload, plan),
    ]
    batches = ["1", "2", "4", "8", "16", "32"]
    if workload.heavy:
        batches = ["1", "4", "8", "16"] if not plan.quick else ["1", "8"]
    elif plan.quick:
        batches = ["1", "4", "8", "32"]
    first = raw_process([*common, "--parts", "decode", "forward", "single", "--batches", *batches], cache)
    grid: list[dict[str, Any]] = []
    for extra in pipeline_grid(workload, max_batch):
        result = raw_process([*common, "--parts", "pipeline", *extra], cache)
        for point in result["pipeline"]:
            point["overrides"] = result["overrides"]
            grid.append(point)
    first["pipeline"] = grid
    return first


def raw_pass2(workload: Workload, plan: Plan, cache: Path, best: dict[str, Any]) -> dict[str, Any]:
    args = [
        "--model",
        workload.model,
        "--images",
        workload.images,
        "--seconds",
        raw_seconds(workload, plan),
        "--parts",
        "forward",
        "pipeline",
        "--batches",
        "1",
        "--pipeline-batches",
        str(best["batch"]),
        "--workers",
        str(best["workers"]),
    ]
    if best.get("threads"):
        args += ["--threads", str(best["threads"])]
    if best.get("overrides"):
        args += ["--overrides", json.dumps(best["overrides"])]
    return raw_process(args, cache)


# -- served ------------------------------------------------------------------------------------


class Probe:
    """Window-edge hooks: scrape ``/metrics`` and read the server's CPU time.

    ``version``: read that version's series only (a shadow workload's caller-facing version 1;
    its shadow copies are counted apart, by outcome).
    """

    def __init__(self, server: ServedModel, version: str | None = None) -> None:
        self.server = server
        self.version = version
        self.edges: list[tuple[float, float, dict[str, float]]] = []

    async def mark(self) -> None:
        _, body = await load.fetch(self.server.port, "/metrics")
        metrics = parse_metrics(body.decode(), self.server.model, self.version)
        self.edges.append((time.perf_counter(), self.server.cpu_seconds(), metrics))

    def result(self) -> dict[str, Any]:
        (t0, cpu0, m0), (t1, cpu1, m1) = self.edges[-2:]
        return {"server_cpu_cores": (cpu1 - cpu0) / (t1 - t0), **window_metrics(m0, m1)}


async def closed_point(
    server: ServedModel, requests: Sequence[bytes], clients: int, plan: Plan, workload: Workload
) -> dict[str, Any]:
    probe = Probe(server, "1" if workload.shadow else None)
    window = await load.closed_loop(
        server.port, requests, clients, plan.warmup_s, plan.duration(workload), probe.mark, probe.mark
    )
    return {**window.result(), **probe.result()}


async def open_point(
    server: ServedModel, requests: Sequence[bytes], rate: float, plan: Plan, workload: Workload, seed: int
) -> dict[str, Any]:
    probe = Probe(server, "1" if workload.shadow else None)
    window = await load.open_loop(
        server.port, requests, rate, plan.warmup_s, plan.duration(workload), probe.mark, probe.mark, seed=seed
    )
    return {**window.result(), **probe.result()}


def final_shadow_counters(server: ServedModel, settle_s: float = 10.0) -> dict[str, dict[str, float]]:
    """The server's shadow counters once the copies still running have finished (or ``settle_s``)."""
    deadline = time.monotonic() + settle_s
    previous: dict[str, dict[str, float]] | None = None
    while True:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
            counters = shadow_counters(response.read().decode(), server.model)
        if counters == previous or time.monotonic() > deadline:
            return counters
        previous = counters
        time.sleep(0.5)


def final_admission(server: ServedModel, version: str | None = None) -> dict[str, Any]:
    """The server's predictive-admission record since it started (:func:`admission_totals`), logged."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        admission = admission_totals(response.read().decode(), server.model, version)
    log(f"  admission: {admission_note(admission)}")
    return admission


def admission_note(admission: dict[str, Any]) -> str:
    """``41230 admitted inputs scored, mean |error| 3.1 ms, 62% late; refused: none``."""
    refused = ", ".join(f"{n:.0f} {reason}" for reason, n in admission["refused"].items() if n) or "none"
    return (
        f"{admission['predictions']:.0f} admitted inputs scored, mean |error| "
        f"{admission['mean_error_ms']:.1f} ms, {100 * admission['late_share']:.0f}% late; refused: {refused}"
    )


def served(
    workload: Workload, plan: Plan, cache: Path, out: Path, open_rates: Sequence[float] | None = None
) -> dict[str, Any]:
    """Closed-loop then open-loop points against a fresh server; ``open_rates``: these rates (the
    plain twin's) instead of fractions of this workload's own 32-client throughput."""
    spec = model_specs()[workload.model]
    repo = write_repository(
        spec,
        cache,
        Path(tempfile.mkdtemp(prefix="bench-repo-")),
        workload.overrides,
        versions=workload.versions,
    )
    log_path = out / f"server-{workload.name.replace('@', '-')}.log.tmp"
    bodies = request_set(workload.model, workload.images, workload.protocol)
    closed: dict[int, list[dict[str, Any]]] = {c: [] for c in plan.concurrency(workload)}
    opened: dict[float, list[dict[str, Any]]] = {}
    with ServedModel(
        repo, workload.model, env=workload.server_env(spec), log_path=log_path
    ).start() as server:
        requests = [
            load.build_request(bodies.path, body, server.port, bodies.content_type) for body in bodies.bodies
        ]
        log(
            f"  served: ready in {server.cold_start_s:.1f}s; POST {bodies.path} "
            f"({bodies.content_type}, {bodies.mean_bytes / 1024:.0f} KB); "
            f"closed loop {list(closed)} x{plan.repeats}"
        )

        async def sweep() -> None:
            for repeat in range(plan.repeats):
                for clients in closed:
                    closed[clients].append(await closed_point(server, requests, clients, plan, workload))
                    point = closed[clients][-1]
                    log(
                        f"    closed {clients:>2} clients (run {repeat + 1}): "
                        f"{point['throughput_rps']:.1f} req/s, p50 {point['p50_ms']:.1f} ms, "
                        f"p99 {point['p99_ms']:.1f} ms, batch {point['avg_batch_size']:.2f}"
                        f"{shadow_note(point)}"
                    )
            if open_rates is not None:
                opened.update((rate, []) for rate in open_rates)
            else:
                capacity = statistics.median(
                    p["throughput_rps"] for p in closed[max(c for c in closed if c <= 32)]
                )
                for fraction in plan.open_fractions(workload):
                    opened[round(fraction * capacity, 1)] = []
            for repeat in range(plan.repeats):
                for rate in opened:
                    opened[rate].append(await open_point(server, requests, rate, plan, workload, seed=repeat))
                    point = opened[rate][-1]
                    log(
                        f"    open {rate:.1f} req/s (run {repeat + 1}): "
                        f"achieved {point['throughput_rps']:.1f}, p50 {point['p50_ms']:.1f} ms, "
                        f"p99 {point['p99_ms']:.1f} ms, errors {point['errors']}{shadow_note(point)}"
                    )

        load.run(sweep())
        shadow = final_shadow_counters(server) if workload.shadow else None
        admission = final_admission(server, "1" if workload.shadow else None)
        cold, rss = server.cold_start_s, server.peak_rss_mb
    log_path.unlink(missing_ok=True)
    result: dict[str, Any] = {
        "request": {
            "path": bodies.path,
            "content_type": bodies.content_type,
            "mean_bytes": bodies.mean_bytes,
        },
        "cold_start_s": cold,
        "peak_rss_mb": rss,
        "closed": [{"clients": c, "runs": runs} for c, runs in closed.items()],
        "open": [{"rate": r, "runs": runs} for r, runs in opened.items()],
        "open_rates_from": workload.twin if open_rates is not None else "own 32-client throughput",
        "admission": admission,
    }
    if shadow is not None:
        result["shadow"] = shadow
        for pair, counts in shadow.items():
            log(
                f"  shadow {pair}: {counts['compared']:.0f} compared, {counts['shed']:.0f} shed, "
                f"{counts['failed']:.0f} failed; agreement {counts.get('agreement_ratio', math.nan):.4f}"
            )
    return result


def served_transports(workload: Workload, plan: Plan, cache: Path, out: Path) -> dict[str, Any]:
    """Every transport at every point against one fresh server (gRPC on a port of its own), the
    transports interleaved within each point and the whole sweep repeated."""
    spec = model_specs()[workload.model]
    repo = write_repository(spec, cache, Path(tempfile.mkdtemp(prefix="bench-repo-")))
    log_path = out / f"server-{workload.name.replace('@', '-')}.log.tmp"
    images = request_set(workload.model, workload.images, "native").bodies
    clients_points = plan.concurrency(workload)
    points: dict[tuple[int, str], list[dict[str, Any]]] = {
        (c, t): [] for c in clients_points for t in transports.TRANSPORTS
    }
    with ServedModel(repo, workload.model, env=spec.settings_env, log_path=log_path).start() as server:
        ports = server.port, server.grpc_port
        answers = transports.check_answers(workload.model, spec.path, images[0], *ports)
        targets = transports.targets(workload.model, spec.path, images, *ports)
        log(
            f"  served: ready in {server.cold_start_s:.1f}s (HTTP {server.port}, gRPC {server.grpc_port}); "
            f"image 0's top-1 over every transport: class {answers[transports.BASELINE][0]}; "
            f"{list(transports.TRANSPORTS)} at {list(clients_points)} clients x{plan.repeats}"
        )

        async def sweep() -> None:
            for repeat in range(plan.repeats):
                for clients in clients_points:
                    for name, target in targets.items():
                        probe = Probe(server)
                        window = await transports.closed_loop(
                            target, clients, plan.warmup_s, plan.duration(workload), probe.mark, probe.mark
                        )
                        point = {**window.result(), **probe.result()}
                        points[clients, name].append(point)
                        log(
                            f"    {clients:>2} clients {name:<14} (run {repeat + 1}): "
                            f"{point['throughput_rps']:.1f} req/s, p50 {point['p50_ms']:.1f} ms, "
                            f"p99 {point['p99_ms']:.1f} ms, errors {point['errors']}, "
                            f"server CPU {point['server_cpu_cores']:.2f}, "
                            f"load gen {point['loadgen_cpu_us_per_request']:.0f} µs/req"
                        )

        load.run(sweep())
        admission = final_admission(server)
        cold, rss = server.cold_start_s, server.peak_rss_mb
    log_path.unlink(missing_ok=True)
    return {
        "admission": admission,
        "baseline": transports.BASELINE,
        "clients": list(clients_points),
        "transports": {
            name: {
                "description": transports.DESCRIPTIONS[name],
                "request_bytes": target.request_bytes,
            }
            for name, target in targets.items()
        },
        "answers": {name: {"index": index, "score": score} for name, (index, score) in answers.items()},
        "cold_start_s": cold,
        "peak_rss_mb": rss,
        "points": [
            {"clients": clients, "transport": name, "runs": runs} for (clients, name), runs in points.items()
        ],
    }


def run_transports(workload: Workload, plan: Plan, cache: Path, out: Path) -> dict[str, Any]:
    spec = model_specs()[workload.model]
    document = spec.model_yaml(weights_for(spec, cache))
    started = time.perf_counter()
    log(f"{workload.name}: transports on one server")
    service = served_transports(workload, plan, cache, out)
    return {
        "name": workload.name,
        "model": workload.model,
        "images": workload.images,
        "description": spec.description,
        "model_yaml": {k: v for k, v in document.items() if k != "weights"},
        "server_env": spec.settings_env,
        "served": service,
        "seconds": time.perf_counter() - started,
    }


#: The ``@cache`` comparison's two servers: ``model.yaml`` overrides of each, in turn order.
CACHE_VARIANTS: dict[str, dict[str, Any]] = {"off": {}, "on": CACHE_OVERRIDES}
#: Positions of the Zipf mix between consecutive points: more than a point's window sends.
ZIPF_STRIDE = 1 << 14


class Rotated(Sequence[bytes]):
    """``items`` from position ``offset`` on, wrapping round: a point's share of a long mix."""

    def __init__(self, items: Sequence[bytes], offset: int) -> None:
        self.items, self.offset = items, offset

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.items[(self.offset + index) % len(self.items)]


def served_cache(workload: Workload, plan: Plan, cache: Path, out: Path) -> dict[str, Any]:
    """The Zipf mix to two servers side by side, output cache off and on, at every point in
    turn (A B, then B A on the next repeat); each point continues the mix where the last one
    left off, the two servers getting the same stretch of it."""
    spec = model_specs()[workload.model]
    images = image_set(workload.images)
    sequence = zipf_sequence(len(images))
    clients_points = plan.concurrency(workload)
    points: dict[tuple[int, str], list[dict[str, Any]]] = {
        (c, v): [] for c in clients_points for v in CACHE_VARIANTS
    }
    logs = {v: out / f"server-{workload.name.replace('@', '-')}-{v}.log.tmp" for v in CACHE_VARIANTS}
    with contextlib.ExitStack() as stack:
        servers = {}
        for label, overrides in CACHE_VARIANTS.items():
            repo = write_repository(spec, cache, Path(tempfile.mkdtemp(prefix="bench-repo-")), overrides)
            server = ServedModel(repo, workload.model, env=spec.settings_env, log_path=logs[label])
            servers[label] = stack.enter_context(server.start())
        mixes = {}
        for label, server in servers.items():
            built = [load.build_request(spec.path, data, server.port) for data in images]
            mixes[label] = [built[i] for i in sequence]  # references: one body per distinct image
        log(
            f"  served: cache off and on ready in {servers['off'].cold_start_s:.1f} / "
            f"{servers['on'].cold_start_s:.1f}s; {len(images)} distinct images, Zipf s={ZIPF_S} "
            f"(seed {ZIPF_SEED}); closed loop {list(clients_points)} x{plan.repeats}"
        )

        async def sweep() -> None:
            stretch = 0
            for repeat in range(plan.repeats):
                order = list(servers) if repeat % 2 == 0 else list(reversed(servers))
                for clients in clients_points:
                    for label in order:
                        server = servers[label]
                        probe = Probe(server)
                        window = await load.closed_loop(
                            server.port,
                            Rotated(mixes[label], stretch * ZIPF_STRIDE),
                            clients,
                            plan.warmup_s,
                            plan.duration(workload),
                            probe.mark,
                            probe.mark,
                            disjoint=True,
                        )
                        point = {**window.result(), **probe.result()}
                        points[clients, label].append(point)
                        cached = point.get("cache", {})
                        log(
                            f"    {clients:>2} clients cache {label:<3} (run {repeat + 1}): "
                            f"{point['throughput_rps']:.1f} req/s, p50 {point['p50_ms']:.1f} ms, "
                            f"p99 {point['p99_ms']:.1f} ms, errors {point['errors']}"
                            + (
                                f", hit ratio {cached['hit_ratio']:.3f}, merged {cached['merged_share']:.3f}"
                                if cached
                                else ""
                            )
                        )
                    stretch += 1

        load.run(sweep())
        admission = {label: final_admission(server) for label, server in servers.items()}
        cold = {label: server.cold_start_s for label, server in servers.items()}
        rss = {label: server.peak_rss_mb for label, server in servers.items()}
    for path in logs.values():
        path.unlink(missing_ok=True)
    return {
        "variants": {label: {"model_yaml_overrides": o} for label, o in CACHE_VARIANTS.items()},
        "mix": {
            "images": workload.images,
            "distinct": len(images),
            "zipf_s": ZIPF_S,
            "seed": ZIPF_SEED,
            "length": len(sequence),
            "stride": ZIPF_STRIDE,
            # What an unbounded cache, empty at the start, would hit over the whole mix.
            "unbounded_hit_ratio": zipf_expected_hit_ratio(sequence),
        },
        "clients": list(clients_points),
        "cold_start_s": cold,
        "peak_rss_mb": rss,
        "admission": admission,
        "points": [
            {"clients": clients, "variant": label, "runs": runs} for (clients, label), runs in points.items()
        ],
    }


def run_cache(workload: Workload, plan: Plan, cache: Path, out: Path) -> dict[str, Any]:
    spec = model_specs()[workload.model]
    document = spec.model_yaml(weights_for(spec, cache))
    started = time.perf_counter()
    log(f"{workload.name}: output cache off vs on, Zipf mix")
    service = served_cache(workload, plan, cache, out)
    return {
        "name": workload.name,
        "model": workload.model,
        "images": workload.images,
        "description": spec.description,
        "model_yaml": {k: v for k, v in document.items() if k != "weights"},
        "server_env": spec.settings_env,
        "served": service,
        "seconds": time.perf_counter() - started,
    }


def shadow_note(point: dict[str, Any]) -> str:
    """``, shadow copies 812 compared / 3 shed`` for a window of a shadow workload."""
    shadow = point.get("shadow")
    if not shadow:
        return ""
    return f", shadow copies {shadow['compared']:.0f} compared / {shadow['shed']:.0f} shed"


# -- the run -----------------------------------------------------------------------------------


def run_workload(
    workload: Workload, plan: Plan, cache: Path, out: Path, open_rates: Sequence[float] | None = None
) -> dict[str, Any]:
    spec = model_specs()[workload.model]
    document = spec.model_yaml(weights_for(spec, cache), workload.overrides)
    max_batch = int(document.get("max_batch_size") or 8)
    started = time.perf_counter()
    log(f"{workload.name}: raw pass 1")
    raw1 = raw_pass1(workload, plan, cache, max_batch)
    best = max(raw1["pipeline"], key=lambda p: p["ips"])
    log(
        f"  raw: decode+pre {raw1['decode']['total_ms']:.2f} ms/img, forward {raw1['forward_ips']}, "
        f"pipeline best {best['ips']:.1f} img/s ({best})"
    )
    service = served(workload, plan, cache, out, open_rates)
    log(f"{workload.name}: raw pass 2")
    raw2 = raw_pass2(workload, plan, cache, best)
    return {
        "name": workload.name,
        "model": workload.model,
        "images": workload.images,
        "protocol": workload.protocol,
        "shadow": workload.shadow,
        "twin": workload.twin,
        "versions": list(workload.versions),
        "description": spec.description,
        "model_yaml": {k: v for k, v in document.items() if k != "weights"},
        "server_env": workload.server_env(spec),
        "raw": {"pass1": raw1, "pass2": raw2, "best_pipeline": best},
        "served": service,
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer workloads and points, shorter windows")
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=sorted(WORKLOADS),
        help=(
            "default: every native workload, the @transports and the @cache ones (quick: two, "
            "efficientnet_lite0@transports and tiny_cnn@cache); the @v2 and @shadow ones run when named"
        ),
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="built model weights (reused)")
    parser.add_argument("--repeats", type=int, help="runs of every point (default 2)")
    parser.add_argument("--duration", type=float, help="seconds per measured window (heavy models: x2)")
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    if args.repeats or args.duration:
        plan = replace(
            plan,
            repeats=args.repeats or plan.repeats,
            duration_s=args.duration or plan.duration_s,
            heavy_duration_s=2 * args.duration if args.duration else plan.heavy_duration_s,
        )
    names = args.workloads or (QUICK_WORKLOADS if args.quick else DEFAULT_WORKLOADS)
    # Shadow twins after the plain ones, so that they run at the plain twin's open-loop rates;
    # the comparisons (transports, then the output cache) last.
    names = sorted(
        dict.fromkeys(names),
        key=lambda name: (WORKLOADS[name].comparison, WORKLOADS[name].cache, WORKLOADS[name].shadow),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "mode": "quick" if args.quick else "default",
        "machine": machine(),
        "versions": versions(),
        "plan": plan.__dict__,
        "load_generator": (
            "bench/load.py: raw HTTP/1.1 keep-alive over asyncio on uvloop, in the suite's process"
        ),
        "server": "python -m inference_engine serve --env dev (shipped defaults), one model, loopback",
    }
    if any(WORKLOADS[name].transports for name in names):
        meta["transport_clients"] = dict(transports.DESCRIPTIONS)
    log(
        f"machine: {meta['machine']['cores']} cores, {meta['machine']['cpu_model']}, "
        f"load {meta['machine']['load_average']}"
    )
    log("building model folders (cached after the first run), images and request bodies")
    for name in names:
        workload = WORKLOADS[name]
        weights_for(model_specs()[workload.model], args.cache)
        request_set(workload.model, workload.images, workload.protocol)
    workloads: list[dict[str, Any]] = []
    compared: list[dict[str, Any]] = []
    cached: list[dict[str, Any]] = []
    for name in names:
        workload = WORKLOADS[name]
        if workload.transports:
            compared.append(run_transports(workload, plan, args.cache, args.out))
            continue
        if workload.cache:
            cached.append(run_cache(workload, plan, args.cache, args.out))
            continue
        twin = next((w for w in workloads if w["name"] == workload.twin), None)
        rates = [p["rate"] for p in twin["served"]["open"]] if workload.shadow and twin else None
        if workload.shadow and twin is None:
            log(f"{name}: {workload.twin} not in this run: open-loop rates from its own throughput")
        workloads.append(run_workload(workload, plan, args.cache, args.out, rates))
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    meta["duration_s"] = time.time() - started
    meta["load_average_after"] = list(os.getloadavg())
    results: dict[str, Any] = {"meta": meta, "workloads": workloads}
    if compared:
        results["transports"] = compared
    if cached:
        results["cache"] = cached
    results["summary"] = report.summarise(results)
    stem = "quick" if args.quick else "results"
    report.write(results, args.out, stem)
    log(f"done in {meta['duration_s']:.0f}s: {args.out / (stem + '.md')}")
    print(report.markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
