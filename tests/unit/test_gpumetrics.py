"""GPU gauges: per device from torch.cuda's accounting, never failing a scrape.

No GPU here: a stand-in with torch.cuda's signatures plays two devices; on a CUDA machine the
last test reads the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry

from inference_engine.gpumetrics import watch_cuda
from inference_engine.metrics import Metrics
from tests.helpers import metric_value

GIB = 1024**3


@dataclass
class Properties:
    name: str
    total_memory: int


@dataclass
class FakeCuda:
    devices: list[Properties] = field(
        default_factory=lambda: [Properties("NVIDIA H100", 80 * GIB), Properties("NVIDIA H100", 80 * GIB)]
    )
    allocated: dict[int, int] = field(default_factory=lambda: {0: 3 * GIB, 1: GIB})
    nvml: bool = True
    utilization_calls: int = 0
    broken: set[int] = field(default_factory=set)

    def is_available(self) -> bool:
        return bool(self.devices)

    def device_count(self) -> int:
        return len(self.devices)

    def memory_allocated(self, device: int) -> int:
        if device in self.broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.allocated[device]

    def memory_reserved(self, device: int) -> int:
        return self.allocated[device] + GIB

    def get_device_properties(self, device: int) -> Any:
        return self.devices[device]

    def utilization(self, device: int) -> int:
        self.utilization_calls += 1
        if not self.nvml:
            raise ModuleNotFoundError("pynvml does not seem to be installed")
        return 40 + device


def scrape(metrics: Metrics) -> str:
    return metrics.render().decode()


def test_each_device_reports_memory_and_utilisation() -> None:
    metrics = Metrics()
    assert watch_cuda(metrics.registry, FakeCuda())
    text = scrape(metrics)
    gpu = "NVIDIA H100"
    assert metric_value(text, "inference_engine_gpu_memory_allocated_bytes", device="0", gpu=gpu) == 3 * GIB
    assert metric_value(text, "inference_engine_gpu_memory_reserved_bytes", device="1", gpu=gpu) == 2 * GIB
    assert metric_value(text, "inference_engine_gpu_memory_total_bytes", device="1", gpu=gpu) == 80 * GIB
    assert metric_value(text, "inference_engine_gpu_utilization_ratio", device="0", gpu=gpu) == pytest.approx(
        0.40
    )
    assert metric_value(text, "inference_engine_gpu_utilization_ratio", device="1", gpu=gpu) == pytest.approx(
        0.41
    )


def test_no_cuda_registers_nothing() -> None:
    registry = CollectorRegistry()
    assert not watch_cuda(registry, FakeCuda(devices=[]))
    assert list(registry.collect()) == []


def test_without_nvml_memory_is_still_reported_and_nvml_is_not_asked_again() -> None:
    cuda = FakeCuda(nvml=False)
    metrics = Metrics()
    watch_cuda(metrics.registry, cuda)
    for _ in range(3):
        text = scrape(metrics)
    assert "inference_engine_gpu_utilization_ratio{" not in text
    assert metric_value(text, "inference_engine_gpu_memory_allocated_bytes", device="0") == 3 * GIB
    assert cuda.utilization_calls == 1


def test_a_device_that_cannot_be_read_does_not_fail_the_scrape() -> None:
    metrics = Metrics()
    watch_cuda(metrics.registry, FakeCuda(broken={0}))
    text = scrape(metrics)
    assert 'inference_engine_gpu_memory_allocated_bytes{device="0"' not in text
    assert metric_value(text, "inference_engine_gpu_memory_allocated_bytes", device="1") == GIB
    assert "inference_engine_requests_total" in text or "inference_engine_build_info" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_devices() -> None:
    metrics = Metrics()
    assert watch_cuda(metrics.registry)
    tensor = torch.ones(256, 1024, 1024, device="cuda:0")  # 1 GiB
    allocated = metric_value(scrape(metrics), "inference_engine_gpu_memory_allocated_bytes", device="0")
    assert allocated >= tensor.numel() * 4
