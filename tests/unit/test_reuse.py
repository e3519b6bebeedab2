"""Re-used answers: the pixel digest, the byte-bounded LRU, and singleflight merging."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from inference_engine.errors import DeadlineExceeded
from inference_engine.metrics import Metrics
from inference_engine.models.config import CacheConfig
from inference_engine.reuse import (
    ENTRY_OVERHEAD_BYTES,
    Flights,
    OutputCache,
    Reuse,
    output_bytes,
    pixel_digest,
)

LABELS = ("m", "1")


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"model": "m", "version": "1", **labels})
    return value or 0.0


def test_the_digest_follows_the_pixels_not_the_container() -> None:
    pixels = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    assert pixel_digest(pixels) == pixel_digest(pixels.copy())
    assert pixel_digest(pixels) == pixel_digest(torch.from_numpy(pixels.copy()))
    assert pixel_digest(np.asfortranarray(pixels)) == pixel_digest(pixels)  # same values, other layout
    changed = pixels.copy()
    changed[0, 0, 0] += 1e-3
    assert pixel_digest(changed) != pixel_digest(pixels)
    assert pixel_digest(pixels.astype(np.float16)) != pixel_digest(pixels)  # dtype is part of it
    assert pixel_digest(pixels.reshape(2, 3, 2)) != pixel_digest(pixels)  # and the shape
    assert pixel_digest({"pixel_values": pixels, "mask": [pixels]}) is not None
    assert pixel_digest(object()) is None
    assert pixel_digest({"text": "a photo"}) is None  # nothing it can hash: no re-use


def test_the_lru_stays_within_its_bytes_and_counts_hits(metrics: Metrics) -> None:
    row = np.zeros(256, dtype=np.float32)  # 1 KiB
    size = output_bytes(row)
    assert size == 1024 + ENTRY_OVERHEAD_BYTES
    cache = OutputCache(size * 3, LABELS, metrics)
    for index in range(3):
        cache.put(("image", bytes([index])), row.copy())
    assert cache.get(("image", b"\x00")) is not None  # now the most recently used
    cache.put(("image", b"\x03"), row.copy())  # evicts the least recently used: 1
    assert cache.get(("image", b"\x01")) is None
    assert cache.get(("image", b"\x00")) is not None and len(cache) == 3
    assert cache.bytes <= cache.max_bytes
    assert sample(metrics, "inference_engine_cache_lookups_total", result="hit") == 2
    assert sample(metrics, "inference_engine_cache_lookups_total", result="miss") == 1
    assert sample(metrics, "inference_engine_cache_evictions_total") == 1
    assert sample(metrics, "inference_engine_cache_bytes") == cache.bytes


def test_entries_are_read_only_and_oversized_outputs_are_not_kept(metrics: Metrics) -> None:
    cache = OutputCache(4096, LABELS, metrics)
    cache.put(("image", b"a"), np.ones(4, dtype=np.float32))
    stored = cache.get(("image", b"a"))
    assert isinstance(stored, np.ndarray)
    with pytest.raises(ValueError, match="read-only"):
        stored[0] = 5.0  # an entry answers many requests: nobody may change it
    cache.put(("image", b"big"), np.ones(10_000, dtype=np.float32))
    assert cache.get(("image", b"big")) is None


def test_ten_thousand_distinct_outputs_stay_within_the_bound(metrics: Metrics) -> None:
    cache = OutputCache(1_000_000, LABELS, metrics)
    for index in range(10_000):
        cache.put(("image", index.to_bytes(4, "big")), np.full(1000, index, dtype=np.float32))
    assert cache.bytes <= 1_000_000
    assert len(cache) == 1_000_000 // output_bytes(np.zeros(1000, dtype=np.float32))
    assert cache.get(("image", (9_999).to_bytes(4, "big"))) is not None  # the newest stay


async def test_identical_inputs_in_flight_share_one_run(metrics: Metrics) -> None:
    flights = Flights(LABELS, metrics)
    started: list[asyncio.Future[str]] = []

    def start() -> asyncio.Future[str]:
        started.append(asyncio.get_running_loop().create_future())
        return started[-1]

    deadline = time.monotonic() + 5
    callers = [asyncio.create_task(flights.run(("image", b"k"), start, deadline)) for _ in range(32)]
    await asyncio.sleep(0.01)
    assert len(started) == 1 and len(flights) == 1  # queued once, at once
    started[0].set_result("answer")
    assert await asyncio.gather(*callers) == ["answer"] * 32
    assert len(flights) == 0
    assert sample(metrics, "inference_engine_merged_inputs_total") == 31


async def test_each_caller_keeps_its_own_deadline_and_cancellation(metrics: Metrics) -> None:
    flights = Flights(LABELS, metrics)
    shared: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    patient = asyncio.create_task(flights.run(("image", b"k"), lambda: shared, time.monotonic() + 5))
    await asyncio.sleep(0.01)
    with pytest.raises(DeadlineExceeded):  # an impatient caller leaves at its own deadline
        await flights.run(("image", b"k"), lambda: shared, time.monotonic() + 0.05)
    leaving = asyncio.create_task(flights.run(("image", b"k"), lambda: shared, time.monotonic() + 5))
    await asyncio.sleep(0.01)
    leaving.cancel()  # its client went away
    await asyncio.sleep(0.01)
    assert not shared.cancelled()  # still queued for the caller that waits
    shared.set_result("answer")
    assert await patient == "answer"


async def test_the_shared_run_stops_when_its_last_caller_leaves(metrics: Metrics) -> None:
    flights = Flights(LABELS, metrics)
    shared: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    only = asyncio.create_task(flights.run(("image", b"k"), lambda: shared, time.monotonic() + 5))
    await asyncio.sleep(0.01)
    only.cancel()
    await asyncio.sleep(0.01)
    assert shared.cancelled()  # its input is dropped before its batch: the slot given back
    assert len(flights) == 0


async def test_a_refusal_at_queueing_reaches_the_caller_and_starts_no_flight(metrics: Metrics) -> None:
    flights = Flights(LABELS, metrics)

    def refused() -> asyncio.Future[str]:
        raise DeadlineExceeded("no room")

    with pytest.raises(DeadlineExceeded, match="no room"):
        await flights.run(("image", b"k"), refused, time.monotonic() + 5)
    assert len(flights) == 0


async def test_a_caller_with_time_left_queues_again_when_the_shared_run_timed_out(metrics: Metrics) -> None:
    flights = Flights(LABELS, metrics)
    loop = asyncio.get_running_loop()
    started: list[asyncio.Future[str]] = []

    def start() -> asyncio.Future[str]:
        started.append(loop.create_future())
        if len(started) == 1:  # dropped in the queue at its starter's deadline
            loop.call_later(0.05, started[0].set_exception, DeadlineExceeded("passed in the queue"))
        else:
            started[-1].set_result("second run")
        return started[-1]

    starter = asyncio.create_task(flights.run(("image", b"k"), start, time.monotonic() + 0.05))
    await asyncio.sleep(0.01)
    joiner = asyncio.create_task(flights.run(("image", b"k"), start, time.monotonic() + 5))
    with pytest.raises(DeadlineExceeded):
        await starter
    assert await joiner == "second run" and len(started) == 2


def test_reuse_builds_what_its_section_asks(metrics: Metrics) -> None:
    assert Reuse(CacheConfig(enabled=True), LABELS, metrics).flights is None
    both = Reuse(CacheConfig(enabled=True, merge_in_flight=True, max_bytes=2048), LABELS, metrics)
    assert both.cache is not None and both.cache.max_bytes == 2048 and both.flights is not None


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def test_a_tensor_numpy_cannot_hold_is_not_hashed() -> None:
    assert pixel_digest(torch.zeros(3, dtype=torch.bfloat16)) is None


def test_a_row_of_a_batch_is_copied_out_of_it(metrics: Metrics) -> None:
    batch = np.ones((8, 1000), dtype=np.float32)  # what a classifier's predict returns rows of
    cache = OutputCache(1_000_000, LABELS, metrics)
    cache.put(("image", b"row"), batch[3])
    stored = cache.get(("image", b"row"))
    assert isinstance(stored, np.ndarray) and stored.base is None  # holds 4 kB, not the batch's 32
    assert batch.flags.writeable  # the batch itself is left alone
