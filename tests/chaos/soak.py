"""Soak: a steady mixed load on a real server while its resources are sampled from the outside.

``run_soak`` drives a few clients (threads, one ``httpx.Client`` each, keep-alive), each cycling
through the kinds of a ``RequestMix``: good requests on every inference route and bad ones that
must get their documented error. A sampler thread reads ``/metrics`` every ``interval_s`` seconds: resident
memory, open file descriptors, threads and asyncio tasks. ``SoakResult.trends`` fits a
least-squares slope to each quantity after the warm-up, and ``violations`` compares the figures
with ``Bounds``; ``SoakResult.report`` is the JSON written by the soak test.
"""

from __future__ import annotations

import base64
import itertools
import json
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.helpers import cat_jpeg, encode, metric_value

#: The sampled quantities: report key -> metric name on ``GET /metrics``.
QUANTITIES = {
    "rss_bytes": "process_resident_memory_bytes",
    "open_fds": "process_open_fds",
    "threads": "inference_engine_threads",
    "asyncio_tasks": "inference_engine_asyncio_tasks",
}

#: ``503 queue_full`` (with ``Retry-After``) is the one documented answer to overload; it is
#: tolerated (and counted as ``shed``) on any request. No rate limit is configured, so no 429.
OVERLOAD_STATUS, OVERLOAD_TYPE = 503, "queue_full"

MiB = 1024 * 1024


@dataclass(frozen=True)
class Call:
    """One request of the mix and the answer it must get."""

    kind: str
    path: str
    status: int
    error_type: str | None = None  # the native error ``type`` of an expected error
    v2_error: bool = False  # a V2 route's error: ``{"error": "<message>"}``
    binary_answer: bool = False  # a V2 binary answer: a JSON header, then the raw tensors
    content: bytes | None = None
    json_body: Any = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def problem(self, response: httpx.Response) -> str | None:
        """Why ``response`` is not the answer documented for this call, or ``None``."""
        if response.status_code != self.status:
            return f"status {response.status_code}, expected {self.status}"
        if self.status == 200:
            if self.binary_answer:
                split = int(response.headers.get("inference-header-content-length", "-1"))
                return None if 0 < split < len(response.content) else "no binary V2 answer"
            return None if response.content.startswith(b"{") else "a 200 without a JSON object"
        body = _json(response)
        if self.v2_error:
            return None if isinstance(body.get("error"), str) else f"not a V2 error body: {body}"
        found = body.get("error", {}).get("type") if isinstance(body.get("error"), dict) else None
        return None if found == self.error_type else f"error type {found!r}, expected {self.error_type!r}"


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _v2_binary(image: bytes, header_length_delta: int = 0) -> tuple[bytes, dict[str, str]]:
    """A V2 binary-extension body: a JSON header, then one ``BYTES`` element (length, bytes)."""
    tensor = struct.pack("<I", len(image)) + image
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    length = len(header) + header_length_delta
    return header + tensor, {"Inference-Header-Content-Length": str(length)}


class RequestMix:
    """The calls each client cycles through; ``call(kind, n)`` builds the ``n``-th of a kind.

    ``classifier`` is a plain classifier; ``zero_shot`` a model that ranks labels and embeds
    images and texts. Each request varies a little (image, labels, an unknown model's name), so
    per-request state (label cache entries, metric label values) cannot hide behind repetition.
    """

    def __init__(self, classifier: str, zero_shot: str, max_text_chars: int) -> None:
        self.classifier, self.zero_shot, self.max_text_chars = classifier, zero_shot, max_text_chars
        colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (200, 180, 20)]
        self.images = [encode(np.full((48, 64, 3), c, np.uint8), "PNG") for c in colours] + [cat_jpeg()]
        self.truncated = cat_jpeg()[:3000]
        self.builders: dict[str, Callable[[int], Call]] = {
            "classify": self._classify,
            "zero_shot_query": self._zero_shot_query,
            "zero_shot_json": self._zero_shot_json,
            "embed_image": self._embed_image,
            "embed_text": self._embed_text,
            "openai_embeddings": self._openai,
            "v2_binary": self._v2,
            "bad_garbage": lambda n: self._bad_image("bad_garbage", b"not an image %d" % n, 415),
            "bad_empty": lambda n: self._bad_image("bad_empty", b"", 422, "invalid_input"),
            "bad_truncated": lambda n: self._bad_image("bad_truncated", self.truncated, 422, "invalid_input"),
            "bad_json": self._bad_json,
            "unknown_model": self._unknown_model,
            "oversized_text": self._oversized_text,
            "v2_bad_header": self._v2_bad_header,
        }

    @property
    def kinds(self) -> list[str]:
        return list(self.builders)

    def call(self, kind: str, n: int) -> Call:
        return self.builders[kind](n)

    def _image(self, n: int) -> bytes:
        return self.images[n % len(self.images)]

    def _classify(self, n: int) -> Call:
        return Call("classify", f"/v1/models/{self.classifier}/predict", 200, content=self._image(n))

    def _labels(self, n: int) -> list[str]:
        # A new label on every request: the label cache keeps missing and evicting.
        return ["red", "green", "blue", f"something {n} white"]

    def _zero_shot_query(self, n: int) -> Call:
        path = f"/v1/models/{self.zero_shot}/predict"
        params = {"labels": ",".join(self._labels(n)), "top_k": "2"}
        return Call("zero_shot_query", path, 200, content=self._image(n), params=params)

    def _zero_shot_json(self, n: int) -> Call:
        body = {"image": base64.b64encode(self._image(n)).decode(), "labels": self._labels(n)}
        return Call("zero_shot_json", f"/v1/models/{self.zero_shot}/predict", 200, json_body=body)

    def _embed_image(self, n: int) -> Call:
        return Call("embed_image", f"/v1/models/{self.zero_shot}/embed", 200, content=self._image(n))

    def _embed_text(self, n: int) -> Call:
        body = {"texts": [f"a red thing {n}", "green and blue"]}
        return Call("embed_text", f"/v1/models/{self.zero_shot}/embed", 200, json_body=body)

    def _openai(self, n: int) -> Call:
        body = {"model": self.zero_shot, "input": [f"a photo of something blue {n}", "red"]}
        if n % 2:
            body["encoding_format"] = "base64"
        return Call("openai_embeddings", "/v1/embeddings", 200, json_body=body)

    def _v2(self, n: int) -> Call:
        content, headers = _v2_binary(self._image(n))
        path = f"/v2/models/{self.classifier}/infer"
        return Call("v2_binary", path, 200, binary_answer=True, content=content, headers=headers)

    def _bad_image(
        self, kind: str, content: bytes, status: int, error: str = "unsupported_media_type"
    ) -> Call:
        return Call(kind, f"/v1/models/{self.classifier}/predict", status, error, content=content)

    def _bad_json(self, n: int) -> Call:
        headers = {"Content-Type": "application/json"}
        content = b'{"image": "%d' % n  # cut short
        return Call(
            "bad_json",
            f"/v1/models/{self.classifier}/predict",
            400,
            "bad_request",
            content=content,
            headers=headers,
        )

    def _unknown_model(self, n: int) -> Call:
        # A new name every time: no per-name state (metric labels, caches) may grow.
        return Call(
            "unknown_model",
            f"/v1/models/no-such-model-{n}/predict",
            404,
            "model_not_found",
            content=self._image(n),
        )

    def _oversized_text(self, n: int) -> Call:
        body = {"model": self.zero_shot, "input": ["x" * (self.max_text_chars + 1 + n % 7)]}
        return Call("oversized_text", "/v1/embeddings", 422, "invalid_input", json_body=body)

    def _v2_bad_header(self, n: int) -> Call:
        content, headers = _v2_binary(self._image(n), header_length_delta=10_000)  # past the body's end
        return Call(
            "v2_bad_header",
            f"/v2/models/{self.classifier}/infer",
            400,
            v2_error=True,
            content=content,
            headers=headers,
        )


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the load started (negative: before it)
    rss_bytes: float
    open_fds: float
    threads: float
    asyncio_tasks: float

    def value(self, quantity: str) -> float:
        return float(getattr(self, quantity))


@dataclass(frozen=True)
class Trend:
    """One quantity after the warm-up: its least-squares slope and its range."""

    slope_per_min: float
    minimum: float
    maximum: float
    first: float
    last: float

    @property
    def spread(self) -> float:
        return self.maximum - self.minimum


def slope_per_minute(times: Sequence[float], values: Sequence[float]) -> float:
    """The least-squares slope of ``values`` over ``times`` (seconds), per minute."""
    t, y = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    if len(t) < 2 or float(np.ptp(t)) == 0.0:
        return 0.0
    centred = t - t.mean()
    return float((centred * (y - y.mean())).sum() / (centred**2).sum() * 60.0)


def trend(samples: Sequence[Sample], quantity: str) -> Trend:
    values = [s.value(quantity) for s in samples]
    return Trend(
        slope_per_min=slope_per_minute([s.t for s in samples], values),
        minimum=min(values),
        maximum=max(values),
        first=values[0],
        last=values[-1],
    )


@dataclass
class SoakResult:
    duration_s: float
    clients: int
    warmup_s: float
    baseline: Sample  # the idle server, before any load
    samples: list[Sample]
    statuses: dict[str, Counter[int]]  # per kind
    shed: int  # 503 queue_full answers with Retry-After (documented overload)
    unexpected: int  # any other answer, a transport error, a failed scrape
    unexpected_examples: list[str]  # the first few, with their kind

    @property
    def requests(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())

    @property
    def steady(self) -> list[Sample]:
        return [s for s in self.samples if s.t >= self.warmup_s]

    def trends(self) -> dict[str, Trend]:
        return {q: trend(self.steady, q) for q in QUANTITIES}

    def report(self, bounds: Bounds) -> dict[str, Any]:
        return {
            "duration_s": round(self.duration_s, 1),
            "clients": self.clients,
            "warmup_s": round(self.warmup_s, 1),
            "requests": self.requests,
            "rate_per_s": round(self.requests / self.duration_s, 1),
            "statuses": {k: {str(s): n for s, n in sorted(c.items())} for k, c in self.statuses.items()},
            "shed": self.shed,
            "unexpected": self.unexpected,
            "unexpected_examples": self.unexpected_examples,
            "samples": len(self.samples),
            "steady_samples": len(self.steady),
            "baseline": {q: self.baseline.value(q) for q in QUANTITIES},
            "trends": {q: {**asdict(t), "spread": t.spread} for q, t in self.trends().items()},
            "bounds": asdict(bounds),
            "violations": violations(self, bounds),
            # Every sample, for a plot: [t_s, rss_bytes, open_fds, threads, asyncio_tasks].
            "series": [[round(s.t, 2), *(s.value(q) for q in QUANTITIES)] for s in self.samples],
        }

    def summary(self) -> str:
        t = self.trends()
        rss, fds, threads, tasks = (t[q] for q in QUANTITIES)
        return "\n".join(
            [
                f"soak: {self.requests} requests in {self.duration_s:.0f} s "
                f"({self.requests / self.duration_s:.0f}/s, {self.clients} clients), "
                f"shed {self.shed}, unexpected {self.unexpected}; "
                f"{len(self.steady)} samples after a {self.warmup_s:.0f} s warm-up",
                f"  rss      {rss.slope_per_min / MiB:+7.2f} MiB/min  "
                f"{rss.minimum / MiB:.1f}..{rss.maximum / MiB:.1f} MiB",
                f"  fds      {fds.slope_per_min:+7.2f} /min      {fds.minimum:.0f}..{fds.maximum:.0f}",
                f"  threads  {threads.slope_per_min:+7.2f} /min      "
                f"{threads.minimum:.0f}..{threads.maximum:.0f}",
                f"  tasks    {tasks.slope_per_min:+7.2f} /min      {tasks.minimum:.0f}..{tasks.maximum:.0f}"
                f" (idle {self.baseline.asyncio_tasks:.0f})",
            ]
        )


@dataclass(frozen=True)
class Bounds:
    """What counts as flat after the warm-up, and why a leak breaks it while noise does not.

    RSS: a leak grows without end; allocator noise is a few steps of a MiB or so. A step of
    ``rss_step_mib`` at the worst moment of a window of T minutes tilts the least-squares line
    by ``1.5 * step / T``, so the bound is that plus a drift of ``rss_drift_mib_per_min``:
    10.6 MiB/min for the 14 s after the warm-up of a 20 s run, 1.3 MiB/min for a 600 s run.

    Descriptors and threads are counts that a healthy server holds still: the clients keep
    their connections alive, and threads come from fixed pools (the decode pool grows to its
    high-water mark during the warm-up). Their spread after the warm-up, and their excess over
    the idle server, stay within small constants.

    Asyncio tasks come and go with every request: one request holds up to about six (its own,
    the service call, the disconnect watcher, one per input, a label computation), so the count
    jumps between samples and only its peak is bounded: ``tasks_per_client`` per client over
    the idle server. Leaked tasks add to every sample, so the peak also catches a slow leak once
    it has piled up past the margin.
    """

    rss_slope_mib_per_min: float
    fds_spread: int
    fds_over_idle: int
    threads_spread: int
    threads_over_idle: int
    tasks_over_idle: int

    @classmethod
    def for_run(
        cls,
        steady_s: float,
        clients: int,
        rss_step_mib: float = 1.5,
        rss_drift_mib_per_min: float = 1.0,
        tasks_per_client: int = 8,
    ) -> Bounds:
        return cls(
            rss_slope_mib_per_min=rss_drift_mib_per_min + 1.5 * rss_step_mib / (steady_s / 60.0),
            fds_spread=4,
            fds_over_idle=clients + 4,  # one keep-alive connection per client
            threads_spread=2,
            threads_over_idle=clients + 2,
            tasks_over_idle=tasks_per_client * clients,
        )


def violations(result: SoakResult, bounds: Bounds) -> list[str]:
    """Every way ``result`` is not clean or not flat, in words; empty when it passes."""
    found = [f"unexpected: {u}" for u in result.unexpected_examples[:10]]
    if result.unexpected > len(found):
        found.append(f"... {result.unexpected - len(found)} more unexpected answers or errors")
    if len(result.steady) < 6:
        return [*found, f"only {len(result.steady)} samples after the warm-up"]
    t, idle = result.trends(), result.baseline
    rss_slope = t["rss_bytes"].slope_per_min / MiB
    if rss_slope > bounds.rss_slope_mib_per_min:
        found.append(f"RSS grows {rss_slope:.2f} MiB/min (bound {bounds.rss_slope_mib_per_min:.2f})")
    checks = [
        ("open fds: spread", t["open_fds"].spread, bounds.fds_spread),
        ("open fds: peak over idle", t["open_fds"].maximum - idle.open_fds, bounds.fds_over_idle),
        ("threads: spread", t["threads"].spread, bounds.threads_spread),
        ("threads: peak over idle", t["threads"].maximum - idle.threads, bounds.threads_over_idle),
        (
            "asyncio tasks: peak over idle",
            t["asyncio_tasks"].maximum - idle.asyncio_tasks,
            bounds.tasks_over_idle,
        ),
    ]
    found += [f"{what} {value:.0f} > {bound}" for what, value, bound in checks if value > bound]
    return found


def write_report(path: Path, report: dict[str, Any]) -> None:
    """``report`` as indented JSON, with one line per sample of its ``series``."""
    head = json.dumps({k: v for k, v in report.items() if k != "series"}, indent=2)
    rows = ",\n    ".join(json.dumps(row) for row in report.get("series", []))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{head[:-2]},\n  "series": [\n    {rows}\n  ]\n}}\n', encoding="utf-8")


def log_levels(log_text: str) -> Counter[str]:
    """Records per level in the server's JSON log; a line that is not JSON counts as ``unparsed``."""
    levels: Counter[str] = Counter()
    for line in log_text.splitlines():
        if line.startswith('{"ts"') and '"level": "INFO"' in line:  # the bulk, without parsing it
            levels["INFO"] += 1
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        levels[str(record.get("level")) if isinstance(record, dict) else "unparsed"] += 1
    return levels


def sample(client: httpx.Client, t: float) -> Sample:
    text = client.get("/metrics").raise_for_status().text
    return Sample(t, *(metric_value(text, name) for name in QUANTITIES.values()))


class _Tally:
    """What the clients and the sampler saw, shared between their threads."""

    def __init__(self, kinds: Sequence[str], examples: int = 50) -> None:
        self.lock = threading.Lock()
        self.statuses: dict[str, Counter[int]] = {kind: Counter() for kind in kinds}
        self.shed = self.unexpected = 0
        self.examples: list[str] = []
        self.max_examples = examples

    def answer(self, call: Call, response: httpx.Response) -> None:
        problem = call.problem(response)
        with self.lock:
            self.statuses[call.kind][response.status_code] += 1
            if problem is None:
                return
            if _is_queue_full(response):
                self.shed += 1
                return
        self.error(f"{call.kind} {call.path}: {problem}: {response.text[:200]}")

    def error(self, what: str) -> None:
        with self.lock:
            self.unexpected += 1
            if len(self.examples) < self.max_examples:
                self.examples.append(what)


def run_soak(
    url: str,
    mix: RequestMix,
    seconds: float,
    clients: int = 4,
    warmup_fraction: float = 0.3,
    interval_s: float = 0.5,
) -> SoakResult:
    """Drive ``clients`` clients through ``mix`` for ``seconds`` while sampling ``url/metrics``."""
    with httpx.Client(base_url=url, timeout=10) as scraper:
        baseline = sample(scraper, -1.0)
    tally = _Tally(mix.kinds)
    stop = threading.Event()
    samples: list[Sample] = []
    started = time.monotonic()

    def client_loop(index: int) -> None:
        kinds = mix.kinds[index:] + mix.kinds[:index]  # clients out of step with each other
        with httpx.Client(base_url=url, timeout=30) as client:
            for n in itertools.count():
                if stop.is_set():
                    return
                call = mix.call(kinds[n % len(kinds)], n * clients + index)
                try:
                    response = client.post(
                        call.path,
                        content=call.content,
                        json=call.json_body,
                        params=call.params,
                        headers=call.headers,
                    )
                except httpx.TransportError as exc:
                    tally.error(f"{call.kind} {call.path}: {type(exc).__name__}: {exc}")
                    stop.wait(0.1)  # a server that is gone is not hammered until the end
                    continue
                tally.answer(call, response)

    def sampler() -> None:
        with httpx.Client(base_url=url, timeout=10) as scraper:
            while not stop.wait(interval_s):
                try:
                    samples.append(sample(scraper, time.monotonic() - started))
                except httpx.HTTPError as exc:
                    tally.error(f"GET /metrics: {type(exc).__name__}: {exc}")

    threads = [
        threading.Thread(target=client_loop, args=(i,), name=f"soak-client-{i}") for i in range(clients)
    ]
    threads.append(threading.Thread(target=sampler, name="soak-sampler"))
    for thread in threads:
        thread.start()
    try:
        stop.wait(seconds)
    finally:
        stop.set()
        duration = time.monotonic() - started
        for thread in threads:
            thread.join(60)
    return SoakResult(
        duration_s=duration,
        clients=clients,
        warmup_s=seconds * warmup_fraction,
        baseline=baseline,
        samples=samples,
        statuses=tally.statuses,
        shed=tally.shed,
        unexpected=tally.unexpected,
        unexpected_examples=tally.examples,
    )


def _is_queue_full(response: httpx.Response) -> bool:
    """A documented overload answer: ``503`` with ``Retry-After``, ``queue_full`` where typed."""
    if response.status_code != OVERLOAD_STATUS or "retry-after" not in response.headers:
        return False
    error = _json(response).get("error")
    if isinstance(error, str):  # a V2 route: the message names the full queue
        return "queue" in error.lower()
    return isinstance(error, dict) and error.get("type") == OVERLOAD_TYPE
