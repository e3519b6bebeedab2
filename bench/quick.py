"""A quick, honest measurement of the served default model against the raw model, in one run.

Measures: cold start (process start -> /ready), single-request latency at 1 client, throughput
and latency at N concurrent clients (closed loop, fixed duration after warm-up), the achieved
batch size from /metrics, and the raw in-process speed of the same model on the same machine
(decode + pre-process + batched forward pass, no HTTP) so served numbers read as ratios.

    python -m bench.quick [--clients 32] [--duration 15]

The full benchmark suite (open-loop load, plots, more models) is a separate piece of work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def bench_image() -> bytes:
    """A 640x480 JPEG of a real photo (scikit-image's cat), the typical upload size."""
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).resize((640, 480)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def raw_model(repository: Path, model: str, payload: bytes, seconds: float) -> dict[str, Any]:
    """The ceiling: decode in a thread pool feeding forward passes at the fastest batch size.

    No HTTP, no queue; the forward pass is swept over batch sizes first and the pipeline uses
    the size with the most images per second.
    """
    from inference_engine.imaging import ImageLimits, decode_image
    from inference_engine.models.loader import scan_repository
    from inference_engine.settings import BatchingSettings

    specs, _ = scan_repository(repository, BatchingSettings(), [model])
    spec = specs[0]
    handler = spec.handler_class(spec.config, spec.directory)
    handler.load(spec.config.device)
    handler.warmup()
    limits = ImageLimits()

    def prepare(_: int) -> Any:
        return handler.preprocess(decode_image(payload, limits, min_side=handler.decode_min_side()))

    started = time.perf_counter()
    for _ in range(20):
        prepare(0)
    prep_ms = (time.perf_counter() - started) / 20 * 1000
    item = prepare(0)
    forward: dict[int, float] = {}
    for size in (1, 2, 4, 8, 16):
        handler.predict([item] * size)
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < 2.0:
            handler.predict([item] * size)
            runs += 1
        forward[size] = runs * size / (time.perf_counter() - started)
    best = max(forward, key=lambda size: forward[size])
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        done, started = 0, time.perf_counter()
        upcoming = pool.map(prepare, range(best))
        while time.perf_counter() - started < seconds:
            items = list(upcoming)
            upcoming = pool.map(prepare, range(best))  # decode the next batch while this one runs
            handler.predict(items)
            done += len(items)
        list(upcoming)
        pipeline = done / (time.perf_counter() - started)
    return {
        "decode_preprocess_ms": prep_ms,
        "forward_ips_by_batch": forward,
        "pipeline_batch": best,
        "pipeline_ips": pipeline,
        "batch1_latency_ms": prep_ms + 1000 / forward[1],
    }


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


async def closed_loop(url: str, payload: bytes, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one_client() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                sent = time.perf_counter()
                response = await client.post("/predict", content=payload)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": ordered[-1] * 1000,
    }


def serve(repository: Path, model: str, port: int) -> tuple[subprocess.Popen[bytes], float]:
    command = [
        sys.executable, "-m", "inference_engine", "serve", "--model-repository", str(repository),
        "--model", model, "--port", str(port), "--log-level", "WARNING",
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return process, time.perf_counter() - started
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.perf_counter() - started > 180:
            raise RuntimeError("server did not become ready")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    payload = bench_image()
    url = f"http://127.0.0.1:{args.port}"

    process, cold_start_s = serve(args.model_repository, args.model, args.port)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(5):
                client.post("/predict", content=payload)
            single = []
            for _ in range(50):
                sent = time.perf_counter()
                assert client.post("/predict", content=payload).status_code == 200
                single.append((time.perf_counter() - sent) * 1000)
        asyncio.run(closed_loop(url, payload, args.clients, 3.0))  # warm-up
        before = httpx.get(f"{url}/metrics").text
        loaded = asyncio.run(closed_loop(url, payload, args.clients, args.duration))
        after = httpx.get(f"{url}/metrics").text
    finally:
        process.terminate()
        process.wait(30)
    inputs = metric_sum(after, "inference_engine_batch_size_sum") - metric_sum(
        before, "inference_engine_batch_size_sum"
    )
    batches = metric_sum(after, "inference_engine_batch_size_count") - metric_sum(
        before, "inference_engine_batch_size_count"
    )
    loaded["avg_batch_size"] = inputs / batches if batches else 0.0

    raw = raw_model(args.model_repository, args.model, payload, args.duration)
    result = {
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "model": args.model,
        "cold_start_to_ready_s": cold_start_s,
        "single_request_ms": {"p50": statistics.median(single), "p90": float(np.percentile(single, 90))},
        "loaded": loaded,
        "raw": raw,
        "ratios": {
            "served_vs_raw_pipeline_throughput": loaded["throughput_rps"] / raw["pipeline_ips"],
            "single_request_overhead_ms": statistics.median(single) - raw["batch1_latency_ms"],
        },
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quick.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print()
    print("| measure | value |\n| --- | --- |")
    print(f"| cold start to ready | {cold_start_s:.2f} s |")
    print(f"| single request, 1 client (p50) | {statistics.median(single):.1f} ms |")
    print(f"| raw batch-1 latency (decode + forward) | {raw['batch1_latency_ms']:.1f} ms |")
    print(f"| served throughput, {args.clients} clients | {loaded['throughput_rps']:.1f} req/s |")
    print(f"| raw in-process pipeline (batch {raw['pipeline_batch']}) | {raw['pipeline_ips']:.1f} img/s |")
    print(f"| served / raw | {result['ratios']['served_vs_raw_pipeline_throughput']:.2f} |")
    print(f"| p50 / p99 at {args.clients} clients | {loaded['p50_ms']:.0f} / {loaded['p99_ms']:.0f} ms |")
    print(f"| average batch size at {args.clients} clients | {loaded['avg_batch_size']:.2f} |")
    print(f"| errors | {loaded['errors']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
