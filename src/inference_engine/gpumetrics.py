"""GPU memory and utilisation per CUDA device, read when ``/metrics`` is scraped.

A model that fits at start-up can run a GPU out of memory later (bigger batches, fragmentation,
another process on the same card), and a GPU that idles while the queue grows points at the
CPU side (decoding). These gauges put both beside the queue depth. They come from torch's own
accounting (``memory_allocated``: tensors alive; ``memory_reserved``: what the caching allocator
holds, which is what ``nvidia-smi`` shows for this process) and, where NVML is installed
(``pynvml``, which ``torch.cuda.utilization`` uses), the device's utilisation. A scrape never
fails because of them: a device that cannot be read is left out of that scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

PREFIX = "inference_engine_gpu"


class CudaApi(Protocol):
    """The part of ``torch.cuda`` read here (a stand-in in tests, where no GPU is present)."""

    def is_available(self) -> bool: ...
    def device_count(self) -> int: ...
    def memory_allocated(self, device: int) -> int: ...
    def memory_reserved(self, device: int) -> int: ...
    def get_device_properties(self, device: int) -> Any: ...
    def utilization(self, device: int) -> int: ...


class CudaCollector(Collector):
    """Prometheus collector of every visible CUDA device's memory and utilisation."""

    def __init__(self, cuda: CudaApi) -> None:
        self._cuda = cuda
        self._utilization_readable = True  # false once NVML is found missing: not retried per scrape

    def collect(self) -> Iterator[GaugeMetricFamily]:
        allocated = _gauge("memory_allocated_bytes", "GPU memory held by live tensors.")
        reserved = _gauge(
            "memory_reserved_bytes",
            "GPU memory held by torch's caching allocator (this process' share as nvidia-smi shows it).",
        )
        total = _gauge("memory_total_bytes", "GPU memory of the device.")
        utilization = _gauge(
            "utilization_ratio",
            "Share of the last sample period the GPU was busy (NVML; every process on the device).",
        )
        for index in range(self._cuda.device_count()):
            try:
                properties = self._cuda.get_device_properties(index)
                labels = [str(index), str(properties.name)]  # device index, product name
                total.add_metric(labels, float(properties.total_memory))
                allocated.add_metric(labels, float(self._cuda.memory_allocated(index)))
                reserved.add_metric(labels, float(self._cuda.memory_reserved(index)))
            except Exception as exc:  # a scrape must not fail on a device
                logger.debug("cannot read CUDA device %d: %s", index, exc)
                continue
            if self._utilization_readable:
                try:
                    utilization.add_metric(labels, self._cuda.utilization(index) / 100.0)
                except Exception as exc:  # pynvml missing, or NVML refused
                    self._utilization_readable = False
                    logger.info("GPU utilisation is not exported: %s (install pynvml)", exc)
        yield from (allocated, reserved, total, utilization)


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    """One family per scrape, labelled by device index and product name."""
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=["device", "gpu"])


def watch_cuda(registry: CollectorRegistry, cuda: CudaApi | None = None) -> bool:
    """Register the GPU gauges when CUDA is present; whether it was."""
    if cuda is None:
        try:
            import torch
        except ImportError:  # the slim install: no torch, and no torch models to watch
            return False
        cuda = torch.cuda
    if not cuda.is_available() or cuda.device_count() == 0:
        return False
    registry.register(CudaCollector(cuda))
    return True
