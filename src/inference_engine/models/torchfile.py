"""Read a PyTorch checkpoint (``torch.save`` of a state dict) into numpy arrays, without torch.

Why: the default model's ImageNet weights ship as a ``.pth`` state dict, and the slim install
serves it on ONNX Runtime with no torch at all (:mod:`inference_engine.models.efficientnet_onnx`
builds the graph from these arrays). Both of torch's formats are read: the zip archive of torch
>= 1.6 (``data.pkl`` + one file per storage) and the legacy stream (pickles followed by the raw
storages) that older checkpoints, including the packaged one, use.

A checkpoint is a pickle, and unpickling can run any code, so this reader does what
``torch.load(weights_only=True)`` does: it resolves only the handful of names a tensor state dict
needs (an ``OrderedDict``, torch's tensor and parameter rebuild functions, the storage types)
and refuses every other global, naming it. Nothing in the file is ever executed.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from inference_engine.errors import ModelLoadError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` and kin: only its element type matters here."""

    dtype: np.dtype[Any]


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by the pickle; its bytes are read after (legacy) or beside (zip) it."""

    key: str
    dtype: np.dtype[Any]


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it: a strided view of a storage."""

    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _StorageRef, offset: int, shape: Any, stride: Any, *_: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(shape), tuple(stride))


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves the names a tensor state dict needs and nothing else."""

    def __init__(self, file: IO[bytes], storages: dict[str, _StorageRef]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        allowed: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(f"refusing {module}.{name}: a weights file holds tensors only")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:  # legacy view of a larger storage
            raise pickle.UnpicklingError("storage views are not supported")
        return self._storages.setdefault(key, _StorageRef(key, storage_type.dtype))


def load_state_dict(path: Path) -> dict[str, npt.NDArray[Any]]:
    """The tensors of the state dict saved at ``path``, by name, as numpy arrays (copies)."""
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with path.open("rb") as file:
            return _load_legacy(file)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, struct.error) as exc:
        raise ModelLoadError(f"{path} is not a readable PyTorch state dict: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read weights {path}: {exc.strerror or exc}") from None


def _load_zip(path: Path) -> dict[str, npt.NDArray[Any]]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise ValueError("no data.pkl in the archive")
        root = pickles[0].removesuffix("data.pkl")
        storages: dict[str, _StorageRef] = {}
        with archive.open(pickles[0]) as file:
            tree = _StateDictUnpickler(file, storages).load()

        def read(ref: _StorageRef) -> npt.NDArray[Any]:
            return np.frombuffer(archive.read(f"{root}data/{ref.key}"), dtype=ref.dtype)

        return _materialise(tree, read)


def _load_legacy(file: IO[bytes]) -> dict[str, npt.NDArray[Any]]:
    if _restricted_load(file) != _LEGACY_MAGIC:
        raise ValueError("not a torch.save file (wrong magic number)")
    _restricted_load(file)  # protocol version
    _restricted_load(file)  # system information
    storages: dict[str, _StorageRef] = {}
    tree = _StateDictUnpickler(file, storages).load()
    keys = _restricted_load(file)
    data: dict[str, npt.NDArray[Any]] = {}
    for key in keys:
        ref = storages[str(key)]
        (count,) = struct.unpack("<q", _read_exactly(file, 8))
        data[ref.key] = np.frombuffer(_read_exactly(file, count * ref.dtype.itemsize), dtype=ref.dtype)
    return _materialise(tree, lambda ref: data[ref.key])


def _restricted_load(file: IO[bytes]) -> Any:
    return _StateDictUnpickler(file, {}).load()


def _read_exactly(file: IO[bytes], size: int) -> bytes:
    chunk = file.read(size)
    if len(chunk) != size:
        raise EOFError("the file ends inside a storage")
    return chunk


def _materialise(tree: Any, read: Callable[[_StorageRef], npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
    if not isinstance(tree, dict):
        raise ValueError(f"the file holds a {type(tree).__name__}, not a state dict")
    cache: dict[str, npt.NDArray[Any]] = {}
    tensors: dict[str, npt.NDArray[Any]] = {}
    for name, value in tree.items():
        if not isinstance(value, _TensorRef):
            continue  # e.g. _metadata: not a tensor
        flat = cache.get(value.storage.key)
        if flat is None:
            flat = cache[value.storage.key] = read(value.storage)
        extent = value.offset + sum((n - 1) * s for n, s in zip(value.shape, value.stride, strict=True))
        if value.offset < 0 or min(value.stride, default=0) < 0 or (all(value.shape) and extent >= flat.size):
            raise ValueError(f"tensor {name} reaches past its storage")
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[value.offset :],
            shape=value.shape,
            strides=tuple(s * itemsize for s in value.stride),
            writeable=False,
        )
        tensors[str(name)] = np.array(view)
    return tensors
