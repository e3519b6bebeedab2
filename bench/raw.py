"""The ceiling: the model in-process, no HTTP, no queue, on the same machine in the same run.

Three measurements of one model on one image set:

* ``forward``: images per second of ``handler.predict`` at batch sizes 1..32, on one
  pre-processed image repeated (pure forward cost, decoding excluded).
* ``decode``: milliseconds per image for decode (Pillow, with the JPEG draft mode the server
  uses) and for pre-processing (resize, crop, normalise), single-threaded, over the image set;
  also decode without draft mode, to show what draft mode saves.
* ``pipeline``: the best in-process pipeline, images per second: ``workers`` threads decode and
  pre-process continuously into a bounded queue while the main thread takes batches of
  ``batch`` items and runs the forward pass, so decoding overlaps the model on both cores. A
  small grid (batch sizes around the best forward batch x decode threads x intra-op threads)
  is tried and the best is the ceiling the server is measured against.

Each configuration runs in its own process (``python -m bench.raw``), so thread settings and
allocator state do not leak between models, and the parent (the load generator) stays small.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.workloads import DEFAULT_CACHE, image_set, model_specs, write_repository

BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def load_handler(model: str, cache_dir: Path, overrides: dict[str, Any] | None = None) -> Any:
    """Load ``model`` exactly as the server would (its handler, its ``model.yaml``), warmed up."""
    spec = model_specs()[model]
    repo = write_repository(spec, cache_dir, Path(tempfile.mkdtemp(prefix="bench-raw-")), overrides)
    handler = handler_from(repo, model)
    handler.warmup()
    return handler


def handler_from(repository: Path, model: str) -> Any:
    """``model``'s handler from ``repository``, loaded as the server loads it (not warmed up)."""
    from inference_engine.models.loader import scan_repository
    from inference_engine.settings import BatchingSettings

    specs, broken = scan_repository(repository, BatchingSettings(), [model])
    if broken:
        raise RuntimeError(f"{model}: {broken[0].error}")
    handler = specs[0].handler_class(specs[0].config, specs[0].directory)
    handler.load(specs[0].config.device)
    return handler


def timed(fn: Callable[[], Any], min_seconds: float, min_runs: int = 2) -> float:
    """Seconds per call of ``fn``: the median of at least ``min_runs`` calls spanning ``min_seconds``."""
    fn()  # warm: first call of a shape allocates
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def prepare_fn(handler: Any, draft: bool = True) -> Callable[[bytes], Any]:
    """The server's own decode + pre-process (``service._prepare``), draft mode switchable."""
    from inference_engine.imaging import ImageLimits, decode_image

    limits = ImageLimits()
    min_side = handler.decode_min_side() if draft else None

    def prepare(data: bytes) -> Any:
        return handler.preprocess(decode_image(data, limits, min_side=min_side))

    return prepare


def decode_costs(handler: Any, images: Sequence[bytes], seconds: float) -> dict[str, float]:
    """Milliseconds per image, single thread: decode (draft / full) and pre-processing."""
    from inference_engine.imaging import ImageLimits, decode_image

    limits = ImageLimits()
    min_side = handler.decode_min_side()
    per = seconds / 3

    def decode_all(side: int | None) -> list[Any]:
        return [decode_image(data, limits, min_side=side) for data in images]

    decoded = decode_all(min_side)
    draft = timed(lambda: decode_all(min_side), per) / len(images)
    full = timed(lambda: decode_all(None), per) / len(images)
    pre = timed(lambda: [handler.preprocess(image) for image in decoded], per) / len(images)
    return {
        "decode_ms": draft * 1000,
        "decode_full_ms": full * 1000,
        "preprocess_ms": pre * 1000,
        "total_ms": (draft + pre) * 1000,
    }


def forward_sweep(handler: Any, item: Any, sizes: Sequence[int], seconds: float) -> dict[int, float]:
    """Images per second of one forward pass at each batch size."""
    return {size: size / timed(lambda size=size: handler.predict([item] * size), seconds) for size in sizes}


def single_latency(
    prepare: Callable[[bytes], Any], handler: Any, images: Sequence[bytes], runs: int
) -> float:
    """Median ms of decode + pre-process + batch-1 forward, one image after another (1 client, no HTTP)."""
    times = []
    for index in range(runs):
        t0 = time.perf_counter()
        handler.predict([prepare(images[index % len(images)])])
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def pipeline(
    prepare: Callable[[bytes], Any],
    handler: Any,
    images: Sequence[bytes],
    batch: int,
    workers: int,
    seconds: float,
) -> float:
    """Images per second with ``workers`` decode threads feeding forward passes of ``batch`` items."""
    ready: queue.Queue[Any] = queue.Queue(maxsize=max(2 * batch, 2 * workers))
    stop = threading.Event()

    def produce(offset: int) -> None:
        index = offset
        while not stop.is_set():
            item = prepare(images[index % len(images)])
            index += workers
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue

    with ThreadPoolExecutor(workers) as pool:
        for offset in range(workers):
            pool.submit(produce, offset)
        for _ in range(2):  # warm-up batches
            handler.predict([ready.get() for _ in range(batch)])
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            handler.predict([ready.get() for _ in range(batch)])
            done += batch
        elapsed = time.perf_counter() - started
        stop.set()
    return done / elapsed


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    overrides = json.loads(args.overrides) if args.overrides else {}
    images = image_set(args.images)
    handler = load_handler(args.model, args.cache, overrides)
    backend = handler.config.backend
    result: dict[str, Any] = {"model": args.model, "images": args.images, "overrides": overrides}
    prepare = prepare_fn(handler, draft=not args.no_draft)
    if "decode" in args.parts:
        result["decode"] = decode_costs(handler, images, args.seconds)
    item = prepare(images[0])
    if "forward" in args.parts:
        result["forward_ips"] = {
            str(k): v for k, v in forward_sweep(handler, item, args.batches, args.seconds).items()
        }
    if "single" in args.parts:
        result["single_ms"] = single_latency(prepare, handler, images, args.single_runs)
    if "pipeline" in args.parts:
        grid = []
        for threads in args.threads if backend == "torch" else [0]:
            if threads:
                set_threads(threads)
            for batch in args.pipeline_batches:
                for workers in args.workers:
                    ips = pipeline(prepare, handler, images, batch, workers, args.seconds)
                    grid.append({"threads": threads, "batch": batch, "workers": workers, "ips": ips})
        result["pipeline"] = grid
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, choices=sorted(model_specs()))
    parser.add_argument("--images", default="photos640")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--overrides", help="JSON merged into model.yaml")
    parser.add_argument("--parts", nargs="+", default=["decode", "forward", "single", "pipeline"])
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--pipeline-batches", type=int, nargs="+", default=[4])
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--threads", type=int, nargs="+", default=[0], help="torch threads (0: leave)")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measured point")
    parser.add_argument("--single-runs", type=int, default=30)
    parser.add_argument("--no-draft", action="store_true", help="decode JPEGs at full size")
    parser.add_argument("--json", type=Path, help="write the result here (default: stdout)")
    args = parser.parse_args(argv)
    result = measure(args)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
