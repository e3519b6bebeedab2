"""Where a torch model runs and how a batch gets there.

The decisions (which device ``auto`` means, whether half precision is allowed, whether to pin
host memory and copy without blocking) are made once, at load, by :func:`plan_placement`, from
facts passed in, so every branch is unit-tested on a CPU-only machine; :meth:`Placement.to_device`
then applies them to every batch on the model thread.

On CUDA a batch is staged in pinned (page-locked) host memory and copied with
``non_blocking=True``: the copy is a DMA the GPU runs while the host thread moves on, which is
what lets the decode of the next batch overlap this one's transfer. On the CPU both are pointless
(pinning costs a copy), so they are off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from inference_engine.errors import ModelLoadError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    """A resolved device, dtype and transfer policy for one model instance."""

    device: torch.device
    dtype: torch.dtype
    pin_memory: bool
    non_blocking: bool

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def to_device(self, items: Sequence[npt.NDArray[np.float32]]) -> torch.Tensor:
        """Stack one batch of pre-processed arrays and move it to the device in the model's dtype."""
        batch = torch.from_numpy(np.stack(items))
        if self.pin_memory:
            batch = batch.pin_memory()
        return batch.to(device=self.device, dtype=self.dtype, non_blocking=self.non_blocking)

    def module(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move a module's weights (once, at load) and switch it to inference behaviour."""
        return module.eval().to(device=self.device, dtype=self.dtype)


def plan_placement(
    device: str,
    dtype: str,
    *,
    cuda_available: bool | None = None,
    cuda_devices: int | None = None,
) -> Placement:
    """Resolve ``device``/``dtype`` from ``model.yaml``; refuse what cannot work with a clear message.

    ``cuda_available`` and ``cuda_devices`` default to what torch sees; tests pass them in.
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if cuda_devices is None:
        cuda_devices = torch.cuda.device_count() if cuda_available else 0
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if device == "auto":
        resolved = torch.device("cuda:0" if cuda_available else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError:
            raise ModelLoadError(f"device {device!r} is not cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda":
        if not cuda_available:
            raise ModelLoadError(f"device {device!r} requested but CUDA is not available here")
        index = resolved.index or 0
        if index >= cuda_devices:
            raise ModelLoadError(f"device {device!r} requested but only {cuda_devices} CUDA device(s) exist")
        resolved = torch.device("cuda", index)
    elif resolved.type != "cpu":
        raise ModelLoadError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or auto")
    torch_dtype = DTYPES[dtype]
    if resolved.type == "cpu" and torch_dtype is not torch.float32:
        raise ModelLoadError(
            f"dtype {dtype} needs a CUDA device (half precision on a CPU is slower, not faster); "
            "use float32 or device: cuda"
        )
    on_cuda = resolved.type == "cuda"
    return Placement(resolved, torch_dtype, pin_memory=on_cuda, non_blocking=on_cuda)


def set_intra_op_threads(threads: int | None) -> None:
    """Cap torch's intra-op threads for forward passes run on the calling (model) thread.

    ``None`` leaves torch's default (one per core). On a small machine one or two fewer than
    the cores can win, because image decoding runs in parallel with the forward pass.
    """
    if threads is not None:
        torch.set_num_threads(threads)
