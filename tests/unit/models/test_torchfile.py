"""The torch-free checkpoint reader: the same arrays as torch.load, in both of torch's formats,
and nothing in the file ever executed."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from inference_engine.errors import ModelLoadError
from inference_engine.models.efficientnet_onnx import packaged_weights
from inference_engine.models.torchfile import load_state_dict


def assert_same(path: Path) -> None:
    expected = torch.load(path, map_location="cpu", weights_only=True)
    got = load_state_dict(path)
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.numpy().dtype, name
        np.testing.assert_array_equal(got[name], tensor.numpy(), err_msg=name)


def test_the_packaged_legacy_checkpoint_reads_as_torch_reads_it() -> None:
    path = packaged_weights("efficientnet-lite0")
    assert not path.read_bytes().startswith(b"PK")  # the old stream format, not a zip
    assert_same(path)


def test_a_zip_checkpoint_with_views_and_integer_tensors(tmp_path: Path) -> None:
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 2))
    state = network.state_dict()
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    state["transposed"] = base.t()  # a strided view of a storage shared with...
    state["sliced"] = base[1:3, 2:]  # ...an offset view of the same storage
    state["half"] = torch.ones(3, dtype=torch.float16)
    state["flags"] = torch.tensor([True, False])
    path = tmp_path / "state.pth"
    torch.save(state, path)
    assert_same(path)


def test_a_legacy_checkpoint_written_by_torch(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.randn(2, 3), "n": torch.tensor(7)}, path, _use_new_zipfile_serialization=False)
    assert_same(path)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("touch /tmp/should-not-exist",))


def test_code_in_the_pickle_is_refused_and_named(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "payload": _Evil()}, path)
    with pytest.raises(ModelLoadError, match=r"refusing (posix|os)\.system"):
        load_state_dict(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a pickle at all", "not a readable PyTorch state dict"),
        (pickle.dumps(12345), "wrong magic number"),
    ],
)
def test_files_that_are_not_checkpoints(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_state_dict(path)


def test_a_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save({"w": torch.randn(64, 64)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="ends inside a storage"):
        load_state_dict(path)


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path: Path) -> None:
    # A hand-made legacy file whose tensor claims 100 elements of a 4-element storage.
    import io

    body = io.BytesIO()
    pickler = pickle.Pickler(body, protocol=2)

    def persistent_id(obj: object) -> object:
        return ("storage", torch.FloatStorage, "0", "cpu", 4, None) if obj == "STORAGE" else None

    pickler.persistent_id = persistent_id  # type: ignore[method-assign]

    class Tensor:
        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return (torch._utils._rebuild_tensor_v2, ("STORAGE", 0, (100,), (1,), False, {}))

    pickler.dump({"w": Tensor()})
    path = tmp_path / "overrun.pth"
    path.write_bytes(
        pickle.dumps(0x1950A86A20F9469CFC6C)
        + pickle.dumps(1001)
        + pickle.dumps({})
        + body.getvalue()
        + pickle.dumps(["0"])
        + struct.pack("<q", 4)
        + np.zeros(4, np.float32).tobytes()
    )
    with pytest.raises(ModelLoadError, match="reaches past its storage"):
        load_state_dict(path)
    assert not Path("/tmp/should-not-exist").exists()
