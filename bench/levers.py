"""A/B measurements of the performance levers, interleaved in one session.

    python -m bench.levers [LEVER ...] [--rounds 2] [--out bench/results/levers.json]

A served lever starts the server once per variant per round, in ABBA order (A B, then B A), and
measures closed-loop points on each start, so background load that drifts during the session
lands on every variant alike. Raw levers time the two implementations in one process, also
alternating. Results are merged into ``levers.json`` by lever name; ``docs/PERFORMANCE.md``
quotes them. Not part of ``make bench`` (it would not fit its time budget):
``make bench-levers`` runs them all (about 16 minutes).

A lever on ``images="stripes640"`` (:class:`bench.workloads.StripedRequests`) sends a distinct
image with every request of a server start (the clients' streams disjoint, each point a block of
its own), so that nothing can be answered from the output cache; its table notes the cache
lookups and hits seen (0 hits expected).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import load
from bench.run import Probe, log, machine
from bench.server import ServedModel
from bench.workloads import (
    CACHE_OVERRIDES,
    DEFAULT_CACHE,
    ROOT,
    STRIPES_COUNT,
    StripedRequests,
    image_set,
    model_specs,
    write_repository,
)

OUT = ROOT / "bench" / "results" / "levers.json"


@dataclass(frozen=True)
class Variant:
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)  # merged into model.yaml
    env: dict[str, str] = field(default_factory=dict)  # server environment (IE_* settings, OMP_*)
    launcher: tuple[str, ...] = ("-m", "inference_engine")
    #: Server processes, each serving the model on its own port; a point's load is split evenly
    #: across them (clients, or the open loop's rate) and its figures merged.
    replicas: int = 1


@dataclass(frozen=True)
class Lever:
    """A served A/B: ``variants`` of one model, closed loop at ``levels`` clients."""

    name: str
    question: str
    model: str
    variants: tuple[Variant, ...]
    levels: tuple[int, ...] = (1, 32)
    images: str = "photos640"
    duration_s: float = 3.0
    #: Open-loop points too (Poisson arrivals at these requests/s): latency at a load the server
    #: is not saturated by, where a closed loop cannot look.
    open_rates: tuple[float, ...] = ()


#: A lever's ``images`` for "never the same image twice in a server start" (StripedRequests).
STRIPES = "stripes640"
#: Striped images per point of a server start: each point sends from a block of its own.
STRIPES_PER_POINT = STRIPES_COUNT // 16


def _t(n: int) -> dict[str, Any]:
    return {"intra_op_threads": n}


SERVED: dict[str, Lever] = {
    lever.name: lever
    for lever in (
        Lever(
            "threads_tiny",
            "torch intra-op threads vs decode threads on 2 cores (tiny CNN)",
            "tiny_cnn",
            (Variant("intra-op 2", _t(2)), Variant("intra-op 1", _t(1))),
        ),
        Lever(
            "threads_effnet",
            "torch intra-op threads (EfficientNet-Lite0, torch)",
            "efficientnet_lite0",
            (Variant("intra-op 2", _t(2)), Variant("intra-op 1", _t(1))),
        ),
        Lever(
            "threads_vit",
            "torch intra-op threads (ViT-B/32)",
            "clip_vit_b32",
            (Variant("intra-op 2", _t(2)), Variant("intra-op 1", _t(1))),
            levels=(1, 32),
            duration_s=6.0,
        ),
        Lever(
            "omp_passive_effnet",
            "OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep, not spin (EfficientNet)",
            "efficientnet_lite0",
            (
                Variant("intra-op 2", _t(2)),
                Variant("intra-op 2 + passive", _t(2), {"OMP_WAIT_POLICY": "PASSIVE"}),
            ),
        ),
        Lever(
            "omp_passive_tiny",
            "OMP_WAIT_POLICY=PASSIVE with 2 intra-op threads vs 1 thread (tiny CNN)",
            "tiny_cnn",
            (
                Variant("intra-op 1", _t(1)),
                Variant("intra-op 2 + passive", _t(2), {"OMP_WAIT_POLICY": "PASSIVE"}),
            ),
        ),
        Lever(
            "ort_threads",
            "ONNX Runtime intra-op threads",
            "efficientnet_lite0_onnx",
            (Variant("ort 2 threads", _t(2)), Variant("ort 1 thread", _t(1))),
        ),
        Lever(
            "ort_spinning",
            "ONNX Runtime session.intra_op.allow_spinning=0 (2 threads)",
            "efficientnet_lite0_onnx",
            (
                Variant("spinning on", {**_t(2), "options": {"output": "logits", "allow_spinning": True}}),
                Variant("spinning off", {**_t(2), "options": {"output": "logits", "allow_spinning": False}}),
            ),
        ),
        Lever(
            "uvloop_httptools",
            "uvloop + httptools vs asyncio + h11 (tiny CNN, where overhead shows)",
            "tiny_cnn",
            (
                Variant(
                    "asyncio + h11",
                    env={"BENCH_UVICORN_LOOP": "asyncio", "BENCH_UVICORN_HTTP": "h11"},
                    launcher=("-m", "bench.serve_with"),
                ),
                Variant("uvloop + httptools", launcher=("-m", "bench.serve_with")),
            ),
        ),
        Lever(
            "logging",
            "INFO logs (an access line per request, a line per batch) vs WARNING",
            "tiny_cnn",
            (
                Variant("INFO", env={"IE_LOGGING__LEVEL": "INFO"}),
                Variant("WARNING", env={"IE_LOGGING__LEVEL": "WARNING"}),
            ),
        ),
        Lever(
            "eager_batching",
            "close a batch when nothing else is being decoded vs always wait the delay",
            "efficientnet_lite0",
            (
                Variant(
                    "always wait", env={"BENCH_EAGER_BATCHING": "0"}, launcher=("-m", "bench.serve_with")
                ),
                Variant("eager", launcher=("-m", "bench.serve_with")),
            ),
            levels=(1, 4, 32),
        ),
        Lever(
            "eager_batching_tiny",
            "eager batch closing (tiny CNN, intra-op 1)",
            "tiny_cnn",
            (
                Variant(
                    "always wait",
                    _t(1),
                    env={"BENCH_EAGER_BATCHING": "0"},
                    launcher=("-m", "bench.serve_with"),
                ),
                Variant("eager", _t(1), launcher=("-m", "bench.serve_with")),
            ),
            levels=(1, 4, 32),
        ),
        Lever(
            "channels_last",
            "channels_last memory format (EfficientNet-Lite0, torch)",
            "efficientnet_lite0",
            (
                Variant("NCHW", env={"BENCH_CHANNELS_LAST": "0"}, launcher=("-m", "bench.serve_with")),
                Variant("channels_last", launcher=("-m", "bench.serve_with")),
            ),
            levels=(1, 32),
        ),
        Lever(
            "switch_interval_effnet",
            "GIL switch interval 5 ms (Python's default) vs 0.5 ms (EfficientNet-Lite0, torch)",
            "efficientnet_lite0",
            (
                Variant("5 ms", launcher=("-m", "bench.serve_with")),
                Variant("0.5 ms", {}, {"BENCH_SWITCH_INTERVAL": "0.0005"}, ("-m", "bench.serve_with")),
            ),
            levels=(1, 8, 32),
        ),
        Lever(
            "torchscript",
            "EfficientNet served traced and frozen (TorchScript) vs eager",
            "efficientnet_lite0",
            (
                Variant("eager", {"options": {"torchscript": False}}),
                Variant("traced + frozen", {"options": {"torchscript": True}}),
            ),
            levels=(1, 8, 32),
        ),
        Lever(
            "max_batch_effnet",
            "max_batch_size 2 vs 4 vs 8 (EfficientNet-Lite0, torch)",
            "efficientnet_lite0",
            (
                Variant("max batch 2", {"max_batch_size": 2}),
                Variant("max batch 4", {"max_batch_size": 4}),
                Variant("max batch 8", {"max_batch_size": 8}),
            ),
            levels=(8, 32),
        ),
        Lever(
            "max_batch_onnx",
            "max_batch_size 2 vs 4 vs 8 vs 16 (EfficientNet-Lite0, ONNX Runtime)",
            "efficientnet_lite0_onnx",
            (
                Variant("max batch 2", {"max_batch_size": 2}),
                Variant("max batch 4", {"max_batch_size": 4}),
                Variant("max batch 8", {"max_batch_size": 8}),
                Variant("max batch 16", {"max_batch_size": 16}),
            ),
            levels=(8, 32),
        ),
        Lever(
            "preprocess_workers",
            "decode threads: 1 vs 2 (EfficientNet-Lite0 ONNX)",
            "efficientnet_lite0_onnx",
            (
                Variant("2 workers", env={"IE_SERVER__PREPROCESS_WORKERS": "2"}),
                Variant("1 worker", env={"IE_SERVER__PREPROCESS_WORKERS": "1"}),
            ),
        ),
        Lever(
            "preprocess_workers_tiny",
            "decode threads: 1 vs 2 (tiny CNN, one intra-op thread: decoding and HTTP dominate)",
            "tiny_cnn",
            (
                Variant("2 workers", env={"IE_SERVER__PREPROCESS_WORKERS": "2"}),
                Variant("1 worker", env={"IE_SERVER__PREPROCESS_WORKERS": "1"}),
            ),
        ),
        Lever(
            "serving_path_tiny",
            "where the tiny CNN's served/raw goes: the server vs its service called from a bare ASGI "
            "function (no middleware, routing or FastAPI) vs a bare ASGI server that only decodes",
            "tiny_cnn",
            (
                Variant("the server", launcher=("-m", "bench.serve_with")),
                Variant(
                    "service, no HTTP layers",
                    env={"BENCH_BARE_PREDICT": "1"},
                    launcher=("-m", "bench.serve_with"),
                ),
                Variant("bare ASGI, decode only", launcher=("-m", "bench.bare_asgi")),
            ),
            levels=(1, 8, 32),
        ),
        *(
            Lever(
                f"decode_nice_{short}",
                f"pre-processing threads at a lower priority (nice 5) than the forward pass ({title})",
                model,
                (
                    Variant("same priority", launcher=("-m", "bench.serve_with")),
                    Variant(
                        "decode at nice 5",
                        env={"BENCH_DECODE_NICE": "5"},
                        launcher=("-m", "bench.serve_with"),
                    ),
                ),
                levels=(1, 8, 32),
            )
            for short, title, model in (
                ("onnx", "EfficientNet-Lite0, ONNX Runtime", "efficientnet_lite0_onnx"),
                ("tiny", "tiny CNN", "tiny_cnn"),
            )
        ),
        Lever(
            "replicas_tiny",
            "one server process vs two on the same cores, the clients split evenly (tiny CNN: how "
            "much of the GIL-bound HTTP path more processes win back)",
            "tiny_cnn",
            (
                Variant("one process"),
                Variant("two processes", replicas=2),
                Variant(
                    "two processes, one decode thread each",
                    env={"IE_SERVER__PREPROCESS_WORKERS": "1"},
                    replicas=2,
                ),
            ),
            levels=(8, 32),
            duration_s=4.0,
        ),
        Lever(
            "workers_tiny",
            "server.workers: one process vs two on the same port (tiny CNN, GIL-bound in one process)",
            "tiny_cnn",
            (
                Variant("1 worker"),
                Variant("2 workers", env={"IE_SERVER__WORKERS": "2"}),
            ),
            levels=(1, 8, 32),
            duration_s=4.0,
        ),
        Lever(
            "workers_onnx",
            "server.workers: one process with 2 intra-op threads vs two with 1 or 2 each "
            "(EfficientNet-Lite0 on ONNX Runtime: no thread barrier across cores, two batch loops)",
            "efficientnet_lite0_onnx",
            (
                Variant("1 worker, 2 intra-op threads"),
                Variant("2 workers, 1 intra-op thread each", _t(1), env={"IE_SERVER__WORKERS": "2"}),
                Variant("2 workers, 2 intra-op threads each", env={"IE_SERVER__WORKERS": "2"}),
            ),
            levels=(1, 8, 32),
            duration_s=4.0,
        ),
        Lever(
            "instances_onnx",
            "two model instances with 1 intra-op thread each in one process vs one with 2 (EfficientNet-"
            "Lite0 on ONNX Runtime: what workers_onnx wins, without a second process)",
            "efficientnet_lite0_onnx",
            (
                Variant("1 instance, 2 intra-op threads"),
                Variant("2 instances, 1 intra-op thread each", {"instances": 2, "intra_op_threads": 1}),
            ),
            levels=(1, 8, 32),
            duration_s=4.0,
        ),
        *(
            Lever(
                f"batch_delay_{short}",
                f"batch delay: fixed 5 and 20 ms vs adaptive under a 20 ms ceiling ({title})",
                model,
                (
                    Variant("fixed 5 ms", {"batch_delay": "fixed", "max_batch_delay_ms": 5}),
                    Variant("fixed 20 ms", {"batch_delay": "fixed", "max_batch_delay_ms": 20}),
                    Variant("adaptive, 20 ms ceiling", {"batch_delay": "adaptive", "max_batch_delay_ms": 20}),
                ),
                levels=levels,
                duration_s=duration,
                open_rates=rates,
            )
            for short, title, model, levels, duration, rates in (
                ("tiny", "tiny CNN", "tiny_cnn", (1, 8, 32), 3.0, (200.0, 400.0)),
                (
                    "onnx",
                    "EfficientNet-Lite0, ONNX Runtime",
                    "efficientnet_lite0_onnx",
                    (1, 8, 32),
                    3.0,
                    (40.0, 80.0),
                ),
                ("vit", "CLIP ViT-B/32", "clip_vit_b32", (1, 8), 6.0, (5.0,)),
            )
        ),
        Lever(
            "reuse_admission_overhead",
            "everything on where it cannot help: predictive admission, output cache and merged "
            "duplicates vs queue-only admission and no cache (tiny CNN, every image distinct)",
            "tiny_cnn",
            (
                Variant("all off", {"admission": "queue_only"}),
                Variant("all on", {"admission": "predictive", **CACHE_OVERRIDES}),
            ),
            levels=(1, 8, 32),
            images=STRIPES,
        ),
        Lever(
            "reuse_admission_parts",
            "which part of everything-on costs where it cannot help: predictive admission alone, the "
            "output cache alone, merging alone, against queue-only admission and no cache (tiny CNN, "
            "every image distinct)",
            "tiny_cnn",
            (
                Variant("all off", {"admission": "queue_only"}),
                Variant("predictive admission", {"admission": "predictive"}),
                Variant("output cache", {"admission": "queue_only", "cache": {"enabled": True}}),
                Variant("merging", {"admission": "queue_only", "cache": {"merge_in_flight": True}}),
            ),
            levels=(8, 32),
            images=STRIPES,
        ),
    )
}


def lever_requests(lever: Lever, path: str, port: int, point: int) -> Sequence[bytes]:
    """What a lever's point sends: its image set's requests, cycled, or for :data:`STRIPES` a
    block of distinct images of its own (``point``: the point's place in the server start)."""
    if lever.images == STRIPES:
        return StripedRequests(path, port, first=point * STRIPES_PER_POINT)
    return [load.build_request(path, data, port) for data in image_set(lever.images)]


def run_served(lever: Lever, rounds: int, cache: Path, warmup: float) -> dict[str, Any]:
    spec = model_specs()[lever.model]
    points_at = [str(c) for c in lever.levels] + [f"{r:g}/s open" for r in lever.open_rates]
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        v.label: {p: [] for p in points_at} for v in lever.variants
    }
    for round_ in range(rounds):
        order = lever.variants if round_ % 2 == 0 else tuple(reversed(lever.variants))
        for variant in order:
            with contextlib.ExitStack() as started:
                servers = [
                    started.enter_context(
                        ServedModel(
                            write_repository(
                                spec, cache, Path(tempfile.mkdtemp(prefix="bench-lever-")), variant.overrides
                            ),
                            lever.model,
                            env={**spec.settings_env, **variant.env},
                            launcher=variant.launcher,
                        ).start()
                    )
                    for _ in range(variant.replicas)
                ]

                async def points(servers: list[ServedModel] = servers, label: str = variant.label) -> None:
                    disjoint = lever.images == STRIPES  # distinct images stay distinct across clients
                    closed = functools.partial(load.closed_loop, disjoint=disjoint)
                    runs = [(str(c), closed, c) for c in lever.levels]
                    runs += [(f"{r:g}/s open", load.open_loop, r) for r in lever.open_rates]
                    for index, (at, drive, level) in enumerate(runs):
                        point = await measure_point(lever, spec.path, servers, drive, level, index, warmup)
                        samples[label][at].append(point)
                        cached = point.get("cache")
                        log(
                            f"  {lever.name} [{label}] {at}: "
                            f"{point['throughput_rps']:.1f} req/s, "
                            f"p50 {point['p50_ms']:.1f} ms, p99 {point['p99_ms']:.1f} ms, "
                            f"batch {point['avg_batch_size']:.2f}, server CPU {point['server_cpu_cores']:.2f}"
                            + (
                                f", cache hits {cached['hits']:.0f} / misses {cached['misses']:.0f}"
                                if cached
                                else ""
                            )
                        )

                load.run(points())
    keys = (
        "throughput_rps",
        "p50_ms",
        "p99_ms",
        "avg_batch_size",
        "server_cpu_cores",
        "queue_wait_ms",
        "inference_ms",
    )
    table = {
        label: {
            at: {k: statistics.median(p[k] for p in runs) for k in keys}
            | {"runs": [p["throughput_rps"] for p in runs]}
            | _cache_counts(runs)
            for at, runs in by_level.items()
        }
        for label, by_level in samples.items()
    }
    return {"question": lever.question, "model": lever.model, "kind": "served", "variants": table}


async def measure_point(
    lever: Lever,
    path: str,
    servers: Sequence[ServedModel],
    drive: Callable[..., Any],
    level: float,
    index: int,
    warmup: float,
) -> dict[str, Any]:
    """One point: ``level`` (clients, or requests/s) split evenly across ``servers``, driven at
    once; latencies pooled, server CPU summed, batch figures weighted by each server's batches."""
    probes = [Probe(server) for server in servers]
    share = level / len(servers) if isinstance(level, float) else level // len(servers)
    windows = await asyncio.gather(
        *(
            drive(server.port, lever_requests(lever, path, server.port, index), share, warmup,
                  lever.duration_s, probe.mark, probe.mark)
            for server, probe in zip(servers, probes, strict=True)
        )
    )  # fmt: skip
    merged = load.Window(windows[0].kind, level, lever.duration_s)
    for window in windows:
        merged.latencies_s += window.latencies_s
        merged.errors += window.errors
        merged.loadgen_cpu_s += window.loadgen_cpu_s
        for status, count in window.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + count
    seen = [probe.result() for probe in probes]
    batches = sum(point["batches"] for point in seen) or 1.0
    point: dict[str, Any] = {**merged.result(), "server_cpu_cores": sum(p["server_cpu_cores"] for p in seen)}
    for key in ("avg_batch_size", "queue_wait_ms", "inference_ms"):
        point[key] = sum(p[key] * p["batches"] for p in seen) / batches
    if any("cache" in p for p in seen):
        point["cache"] = {
            key: sum(p.get("cache", {}).get(key, 0.0) for p in seen) for key in ("hits", "misses")
        }
    return point


def _cache_counts(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Output-cache lookups and hits over a point's windows (nothing where the cache was off)."""
    cached = [run["cache"] for run in runs if run.get("cache")]
    if not cached:
        return {}
    return {
        "cache_lookups": sum(c["hits"] + c["misses"] for c in cached),
        "cache_hits": sum(c["hits"] for c in cached),
    }


# -- raw levers (in-process, alternating) -----------------------------------------------------------


def _alternate(fns: dict[str, Callable[[], Any]], rounds: int, repeat: int) -> dict[str, float]:
    """Median ms per call of each function, timed in alternation (``rounds`` x ``repeat`` calls each)."""
    times: dict[str, list[float]] = {label: [] for label in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for label, fn in fns.items():
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t0)
    return {label: 1000 * statistics.median(values) for label, values in times.items()}


def _old_to_chw_array(image: Any, config: Any) -> Any:
    """The pre-processing before this lever: resize the whole image, crop, then three array passes."""
    import numpy as np
    from PIL import Image

    from inference_engine.models.transforms import _FILTERS

    width, height = image.size
    scale = config.resize / min(width, height)
    size = (max(config.crop, round(width * scale)), max(config.crop, round(height * scale)))
    if size != image.size:
        image = image.resize(size, _FILTERS[config.interpolation], reducing_gap=3.0)
    left, top = (size[0] - config.crop) // 2, (size[1] - config.crop) // 2
    image = image.crop((left, top, left + config.crop, top + config.crop))
    pixels = np.asarray(image, dtype=np.float32)
    normalised = (pixels - np.asarray(config.mean, dtype=np.float32)) * (
        1.0 / np.asarray(config.std, dtype=np.float32)
    )
    assert isinstance(image, Image.Image)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def raw_preprocess(rounds: int) -> dict[str, Any]:
    """Resize only the crop's source box and normalise in one pass, vs resize-all-then-crop."""
    from inference_engine.imaging import ImageLimits, decode_image
    from inference_engine.models.base import PreprocessingConfig
    from inference_engine.models.transforms import to_chw_array

    out: dict[str, Any] = {
        "question": "pre-processing: resize the crop box only, one-pass normalise",
        "kind": "raw",
    }
    for name, config in (
        ("resize 256 crop 224", PreprocessingConfig()),
        ("resize 64 crop 56", PreprocessingConfig(resize=64, crop=56)),
    ):
        decoded = [decode_image(d, ImageLimits(), min_side=config.resize) for d in image_set("photos640")]
        out[name] = _alternate(
            {
                "before": lambda c=config, d=decoded: [_old_to_chw_array(i, c) for i in d],
                "after": lambda c=config, d=decoded: [to_chw_array(i, c) for i in d],
            },
            rounds * 5,
            5,
        )
        for label in ("before", "after"):
            out[name][label] /= len(decoded)  # ms per image
    return out


def raw_draft(rounds: int) -> dict[str, Any]:
    """JPEG draft mode (DCT-domain downscale while decoding) vs full decode, per image set and target side."""
    from inference_engine.imaging import ImageLimits, decode_image

    out: dict[str, Any] = {
        "question": "JPEG draft-mode decoding vs full decode (ms per image)",
        "kind": "raw",
    }
    for images in ("photos640", "photos12mp"):
        data = image_set(images)
        for side in (256, 224, 64):
            out[f"{images}, min side {side}"] = {
                k: v / len(data)
                for k, v in _alternate(
                    {
                        "full": lambda all_=data: [decode_image(d, ImageLimits()) for d in all_],
                        "draft": lambda s=side, all_=data: [
                            decode_image(d, ImageLimits(), min_side=s) for d in all_
                        ],
                    },
                    rounds * 3,
                    2,
                ).items()
            }
    return out


def raw_channels_last(rounds: int) -> dict[str, Any]:
    """``channels_last`` memory format for EfficientNet-Lite0 on torch (images/s by batch)."""
    import torch

    from bench.raw import load_handler

    handler = load_handler("efficientnet_lite0", DEFAULT_CACHE)
    module = handler.module
    batch_cl = {}
    out: dict[str, Any] = {"question": "channels_last for EfficientNet-Lite0 (torch), img/s", "kind": "raw"}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for size in (1, 4, 8):
            x = torch.randn(size, 3, 224, 224)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            m_cl = module.to(memory_format=torch.channels_last)  # in place: both variants share weights
            m_cf = module.to(memory_format=torch.contiguous_format)

            def run(model: Any, inp: Any, fmt: Any) -> None:
                model.to(memory_format=fmt)
                with torch.inference_mode():
                    model(inp)

            ms = _alternate(
                {
                    "contiguous": lambda m=m_cf, x=x: run(m, x, torch.contiguous_format),
                    "channels_last": lambda m=m_cl, x=x_cl: run(m, x, torch.channels_last),
                },
                rounds * 2,
                3,
            )
            batch_cl[f"threads {threads}, batch {size}"] = {k: 1000 * size / v for k, v in ms.items()}
    out.update(batch_cl)
    return out


def raw_decode_processes(rounds: int) -> dict[str, Any]:
    """Decode + pre-process in 2 threads vs 2 processes (arrays pickled back) vs 1 thread: images/s.

    The processes are spawned, not forked: forking a process that has run torch's OpenMP pool
    deadlocks the child (and the server's request path has run it).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    out: dict[str, Any] = {
        "question": "decode in threads vs processes (img/s, decode + pre-process only)",
        "kind": "raw",
    }
    spawn = multiprocessing.get_context("spawn")
    for images in ("photos640", "photos12mp"):
        data = list(image_set(images)) * (8 if images == "photos640" else 2)
        results: dict[str, list[float]] = {"1 thread": [], "2 threads": [], "2 processes": []}
        with (
            ThreadPoolExecutor(1) as one,
            ThreadPoolExecutor(2) as two,
            ProcessPoolExecutor(2, mp_context=spawn) as procs,
        ):
            list(procs.map(_prepare_224, data[:4]))  # start the children and load their imports
            for _ in range(rounds):
                for label, pool in (("1 thread", one), ("2 threads", two), ("2 processes", procs)):
                    t0 = time.perf_counter()
                    list(pool.map(_prepare_224, data))
                    results[label].append(len(data) / (time.perf_counter() - t0))
        out[images] = {k: statistics.median(v) for k, v in results.items()}
    return out


def _prepare_224(data: bytes) -> Any:
    """The server's decode + pre-processing for a 256/224 model (EfficientNet's), in any process."""
    from inference_engine.imaging import ImageLimits, decode_image
    from inference_engine.models.base import PreprocessingConfig
    from inference_engine.models.transforms import to_chw_array

    return to_chw_array(decode_image(data, ImageLimits(), min_side=256), PreprocessingConfig())


def raw_ort(rounds: int) -> dict[str, Any]:
    """ONNX Runtime graph optimisation level and threads, forward img/s at batch 1 and 4."""
    import numpy as np
    import onnxruntime as ort

    from bench.workloads import weights_for

    path = str(weights_for(model_specs()["efficientnet_lite0_onnx"], DEFAULT_CACHE))
    out: dict[str, Any] = {
        "question": "ONNX Runtime graph optimisation and threads (forward img/s)",
        "kind": "raw",
    }
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    sessions = {}
    for level, value in levels.items():
        for threads in (1, 2):
            options = ort.SessionOptions()
            options.graph_optimization_level = value
            options.intra_op_num_threads = threads
            sessions[f"{level}, {threads} threads"] = ort.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )
    name = next(iter(sessions.values())).get_inputs()[0].name
    for size in (1, 4):
        x = np.random.default_rng(0).standard_normal((size, 3, 224, 224)).astype(np.float32)
        ms = _alternate(
            {k: lambda s=s, x=x: s.run(None, {name: x}) for k, s in sessions.items()}, rounds * 3, 3
        )
        out[f"batch {size}"] = {k: 1000 * size / v for k, v in ms.items()}
    return out


RAW: dict[str, Callable[[int], dict[str, Any]]] = {
    "preprocess": raw_preprocess,
    "draft": raw_draft,
    "channels_last_raw": raw_channels_last,
    "decode_processes": raw_decode_processes,
    "ort_graph": raw_ort,
}


def markdown(results: dict[str, Any]) -> str:
    """One table per lever: served ones by variant and clients, raw ones by case and variant."""
    lines = ["# Lever A/B results", ""]
    for name, lever in results.items():
        load_avg = lever.get("load_average", [[math.nan] * 3])[0]
        before = ", ".join(f"{x:.2f}" for x in load_avg)
        lines += [f"## {name}: {lever['question']}", ""]
        lines += [f"Measured {lever.get('measured', '?')}, load average before {before}.", ""]
        if lever["kind"] == "served":
            lines.append(
                "| variant | load | req/s (median; runs) | p50 ms | p99 ms | avg batch | server CPU |"
            )
            lines.append("| --- | --- | --- | --- | --- | --- | --- |")
            for label, levels in lever["variants"].items():
                for clients, p in levels.items():
                    runs = ", ".join(f"{r:.1f}" for r in p["runs"])
                    lines.append(
                        f"| {label} | {clients} | {p['throughput_rps']:.1f} ({runs}) | {p['p50_ms']:.1f} "
                        f"| {p['p99_ms']:.1f} | {p['avg_batch_size']:.2f} | {p['server_cpu_cores']:.2f} |"
                    )
            cached = {
                label: (
                    sum(p.get("cache_lookups", 0) for p in levels.values()),
                    sum(p.get("cache_hits", 0) for p in levels.values()),
                )
                for label, levels in lever["variants"].items()
                if any("cache_lookups" in p for p in levels.values())
            }
            if cached:
                notes = "; ".join(
                    f"{label}: {hits:.0f} hits in {lookups:.0f} lookups"
                    for label, (lookups, hits) in cached.items()
                )
                lines += ["", f"Output cache over the measured windows: {notes}."]
        else:
            cases = {k: v for k, v in lever.items() if isinstance(v, dict)}
            variants = list(next(iter(cases.values()))) if cases else []
            lines += ["| case | " + " | ".join(variants) + " |", "| --- |" + " --- |" * len(variants)]
            for case, values in cases.items():
                lines.append(
                    f"| {case} | " + " | ".join(f"{values.get(v, math.nan):.2f}" for v in variants) + " |"
                )
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("levers", nargs="*", help=f"default: all ({', '.join([*RAW, *SERVED])})")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (served) or alternations (raw)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--render", action="store_true", help="only re-render the .md beside --out")
    args = parser.parse_args(argv)
    if args.render:
        args.out.with_suffix(".md").write_text(markdown(json.loads(args.out.read_text())))
        return 0
    names = args.levers or [*RAW, *SERVED]
    unknown = [n for n in names if n not in RAW and n not in SERVED]
    if unknown:
        parser.error(f"unknown levers: {', '.join(unknown)}")
    existing = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in names:
        log(f"lever {name}")
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        load_before = machine()["load_average"]
        if name in RAW:
            result = RAW[name](args.rounds)
        else:
            result = run_served(SERVED[name], args.rounds, args.cache, args.warmup)
        result["measured"] = started
        result["load_average"] = [load_before, machine()["load_average"]]
        existing[name] = result
        print(json.dumps({name: result}, indent=1))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(existing, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(existing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
