"""Placement decisions, checked on any machine by passing the CUDA facts in."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference_engine.errors import ModelLoadError
from inference_engine.models.device import Placement, plan_placement, set_intra_op_threads


def test_cpu_is_float32_without_pinning() -> None:
    placement = plan_placement("cpu", "float32", cuda_available=False)
    assert placement == Placement(torch.device("cpu"), torch.float32, pin_memory=False, non_blocking=False)
    assert not placement.is_cuda


@pytest.mark.parametrize(
    ("available", "expected"), [(False, torch.device("cpu")), (True, torch.device("cuda", 0))]
)
def test_auto_prefers_cuda_when_present(available: bool, expected: torch.device) -> None:
    assert plan_placement("auto", "float32", cuda_available=available, cuda_devices=1).device == expected


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_on_cuda_pins_and_copies_without_blocking(dtype: str) -> None:
    placement = plan_placement("cuda:1", dtype, cuda_available=True, cuda_devices=2)
    assert placement.device == torch.device("cuda", 1)
    assert placement.dtype == {"float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    assert placement.pin_memory and placement.non_blocking and placement.is_cuda


def test_bare_cuda_means_the_first_device() -> None:
    assert plan_placement("cuda", "float32", cuda_available=True, cuda_devices=1).device.index == 0


@pytest.mark.parametrize(
    ("device", "dtype", "available", "count", "message"),
    [
        ("cuda", "float32", False, 0, "CUDA is not available"),
        ("cuda:3", "float32", True, 2, "only 2 CUDA device"),
        ("cpu", "float16", False, 0, "float16 needs a CUDA device"),
        ("auto", "bfloat16", False, 0, "bfloat16 needs a CUDA device"),
        ("tpu", "float32", False, 0, "is not cpu, cuda, cuda:N or auto"),
        ("meta", "float32", False, 0, "is not supported"),
        ("cpu", "float64", False, 0, "is not one of"),
    ],
)
def test_impossible_placements_say_why(
    device: str, dtype: str, available: bool, count: int, message: str
) -> None:
    with pytest.raises(ModelLoadError, match=message):
        plan_placement(device, dtype, cuda_available=available, cuda_devices=count)


def test_to_device_stacks_in_the_model_dtype() -> None:
    placement = plan_placement("cpu", "float32")
    batch = placement.to_device([np.ones((3, 4, 4), np.float32), np.zeros((3, 4, 4), np.float32)])
    assert batch.shape == (2, 3, 4, 4)
    assert batch.dtype == torch.float32
    assert batch.device.type == "cpu"
    module = placement.module(torch.nn.Dropout(0.5).train())
    assert not module.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_on_cuda_in_half_precision() -> None:
    placement = plan_placement("cuda", "float16")
    batch = placement.to_device([np.ones((3, 4, 4), np.float32)])
    torch.cuda.synchronize()
    assert batch.device.type == "cuda"
    assert batch.dtype == torch.float16


def test_intra_op_threads_apply_to_the_calling_thread() -> None:
    before = torch.get_num_threads()
    try:
        set_intra_op_threads(1)
        assert torch.get_num_threads() == 1
        set_intra_op_threads(None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
