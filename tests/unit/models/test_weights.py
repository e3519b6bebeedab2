"""Where Hugging Face weights come from: a folder, the hub (replaced here), or a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import constants, errors

from inference_engine.errors import ModelLoadError
from inference_engine.models import weights
from inference_engine.models.base import ModelConfig
from inference_engine.models.weights import (
    HubRef,
    HubUnreachable,
    parse_hub_id,
    resolve_weights,
    weights_absent,
)

PULL = "inference-engine pull openai/clip-vit-base-patch32"


def config(**values: Any) -> ModelConfig:
    return ModelConfig.model_validate({"name": "clip", "handler": "clip", **values})


@pytest.fixture(autouse=True)
def _online_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No offline flags leak in from the environment; the real HF cache is never read."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[HubRef, Path | None, bool]]:
    """Replace the one network call; record what it was asked."""
    calls: list[tuple[HubRef, Path | None, bool]] = []

    def fake(hub: HubRef, *, local_dir: Path | None = None, offline: bool = False) -> Path:
        calls.append((hub, local_dir, offline))
        raise HubUnreachable("no network in this test")

    monkeypatch.setattr(weights, "download_snapshot", fake)
    return calls


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("openai/clip-vit-base-patch32", HubRef("openai/clip-vit-base-patch32")),
        ("facebook/flava-full@main", HubRef("facebook/flava-full", "main")),
        ("org/name@refs/pr/3", HubRef("org/name", "refs/pr/3")),
        ("weights", None),
        ("./weights", None),
        ("/abs/path", None),
        ("a/b/c", None),
        ("org/../name", None),
        ("org/name@", None),
    ],
)
def test_parse_hub_id(value: str, expected: HubRef | None) -> None:
    assert parse_hub_id(value) == expected


def test_hub_ref_prints_as_written_and_as_a_pull_command() -> None:
    ref = HubRef("org/name", "v2")
    assert str(ref) == "org/name@v2"
    assert ref.pull_command(Path("m/w")) == "inference-engine pull org/name --revision v2 --to m/w"
    assert HubRef("org/name").pull_command(None) == "inference-engine pull org/name"


def test_an_existing_folder_is_used_without_touching_the_hub(tmp_path: Path, no_network: list[Any]) -> None:
    (tmp_path / "weights").mkdir()
    cfg = config(options={"hub_id": "openai/clip-vit-base-patch32"})
    assert resolve_weights(cfg, tmp_path) == tmp_path / "weights"
    absolute = tmp_path / "elsewhere"
    absolute.mkdir()
    assert resolve_weights(config(weights=str(absolute)), Path("/nonexistent")) == absolute
    assert no_network == []


def test_weights_default_to_the_weights_folder(tmp_path: Path, no_network: list[Any]) -> None:
    (tmp_path / "weights").mkdir()
    assert resolve_weights(config(), tmp_path) == tmp_path / "weights"


def test_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file; Hugging Face models load from a folder"):
        resolve_weights(config(weights="model.safetensors"), tmp_path)


def test_missing_folder_falls_back_to_the_hub_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = tmp_path / "cache" / "snapshot"
    calls: list[tuple[HubRef, Path | None, bool]] = []

    def fake(hub: HubRef, *, local_dir: Path | None = None, offline: bool = False) -> Path:
        calls.append((hub, local_dir, offline))
        return snapshot

    monkeypatch.setattr(weights, "download_snapshot", fake)
    cfg = config(options={"hub_id": "openai/clip-vit-base-patch32@abc123"})
    assert resolve_weights(cfg, tmp_path) == snapshot
    # Into the cache (not the model folder, often read-only), online.
    assert calls == [(HubRef("openai/clip-vit-base-patch32", "abc123"), None, False)]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolve_weights(cfg, tmp_path)
    assert calls[-1][2] is True  # offline: the cache alone


def test_missing_weights_offline_say_exactly_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real download path, forced offline, over an empty cache and a missing folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "clip").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = config(weights="weights", options={"hub_id": "openai/clip-vit-base-patch32"})
    with pytest.raises(ModelLoadError) as caught:
        resolve_weights(cfg, Path("models/clip"))
    assert str(caught.value) == (
        "weights for model 'clip' not found: models/clip/weights is missing and the hub "
        "(openai/clip-vit-base-patch32) cannot be reached (HF_HUB_OFFLINE is set); on a machine "
        f"with internet run: {PULL} --to models/clip/weights"
    )


def test_unreachable_hub_online_names_no_offline_flag(tmp_path: Path, no_network: list[Any]) -> None:
    with pytest.raises(ModelLoadError) as caught:
        resolve_weights(config(options={"hub_id": "openai/clip-vit-base-patch32"}), tmp_path)
    message = str(caught.value)
    assert "cannot be reached; on a machine with internet run" in message
    assert message.endswith(f"{PULL} --to {tmp_path / 'weights'}")


def test_a_hub_id_as_weights_pulls_into_the_folder_it_names(tmp_path: Path, no_network: list[Any]) -> None:
    """``weights: org/name`` is also read as a folder, so pulling there needs no model.yaml edit."""
    with pytest.raises(ModelLoadError) as caught:
        resolve_weights(config(weights="openai/clip-vit-base-patch32"), tmp_path)
    assert str(caught.value).endswith(f"{PULL} --to {tmp_path / 'openai/clip-vit-base-patch32'}")
    (tmp_path / "openai" / "clip-vit-base-patch32").mkdir(parents=True)
    assert resolve_weights(config(weights="openai/clip-vit-base-patch32"), tmp_path).is_dir()


def test_a_revision_appears_in_the_pull_command(tmp_path: Path, no_network: list[Any]) -> None:
    with pytest.raises(ModelLoadError, match="pull facebook/flava-full --revision v1 --to"):
        resolve_weights(config(options={"hub_id": "facebook/flava-full@v1"}), tmp_path)


def test_no_folder_and_no_hub_id(tmp_path: Path, no_network: list[Any]) -> None:
    with pytest.raises(ModelLoadError, match=r"is missing and no hub id is configured; set options.hub_id"):
        resolve_weights(config(), tmp_path)
    assert no_network == []


@pytest.mark.parametrize("hub_id", ["not a hub id", 42, "a/b/c"])
def test_a_malformed_hub_id_option_is_refused(tmp_path: Path, hub_id: object) -> None:
    with pytest.raises(ModelLoadError, match=r"options.hub_id must read 'org/name'"):
        resolve_weights(config(options={"hub_id": hub_id}), tmp_path)


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_is_read_when_asked_not_at_import(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    assert not weights.hub_offline()
    monkeypatch.setenv(variable, "1")
    assert weights.hub_offline()
    monkeypatch.setenv(variable, "0")
    assert not weights.hub_offline()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # set before huggingface_hub was imported
    assert weights.hub_offline()


# -- download_snapshot over a replaced huggingface_hub.snapshot_download -----------------------


class FakeHub:
    """``snapshot_download`` stand-in: serves ``files`` into a folder, records each call."""

    def __init__(self, root: Path, files: list[str], error: Exception | None = None) -> None:
        self.root, self.files, self.error = root, files, error
        self.calls: list[dict[str, Any]] = []

    def __call__(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append({"repo_id": repo_id, **kwargs})
        if self.error is not None:
            raise self.error
        folder = kwargs.get("local_dir") or self.root / "snapshot"
        Path(folder).mkdir(parents=True, exist_ok=True)
        for name in self.files:
            if any(Path(name).match(p) for p in kwargs["allow_patterns"]):
                (Path(folder) / name).write_text("x")
        return str(folder)


def _response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/o/n"))


def test_download_prefers_safetensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FakeHub(tmp_path, ["config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5"])
    monkeypatch.setattr("huggingface_hub.snapshot_download", hub)
    folder = weights.download_snapshot(HubRef("o/n", "v1"), offline=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert len(hub.calls) == 1
    assert hub.calls[0]["revision"] == "v1"
    assert hub.calls[0]["local_files_only"] is True
    assert "tokenizer.json" in hub.calls[0]["allow_patterns"]


def test_download_falls_back_to_pytorch_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FakeHub(tmp_path, ["config.json", "vocab.txt", "pytorch_model.bin", "flax_model.msgpack"])
    monkeypatch.setattr("huggingface_hub.snapshot_download", hub)
    folder = weights.download_snapshot(HubRef("facebook/flava-full"), local_dir=tmp_path / "to")
    assert folder == tmp_path / "to"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "pytorch_model.bin", "vocab.txt"]
    assert len(hub.calls) == 2


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (errors.RepositoryNotFoundError("x", response=_response(404)), "has no repository o/n"),
        (errors.RevisionNotFoundError("x", response=_response(404)), "has no revision v9"),
        (errors.HfHubHTTPError("server error", response=_response(500)), "downloading o/n@v9 failed"),
        (PermissionError("read-only"), "downloading o/n@v9 failed: PermissionError"),
    ],
)
def test_download_errors_become_load_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception, expected: str
) -> None:
    monkeypatch.setattr("huggingface_hub.snapshot_download", FakeHub(tmp_path, [], error))
    with pytest.raises(ModelLoadError, match=expected):
        weights.download_snapshot(HubRef("o/n", "v9"))


@pytest.mark.parametrize(
    "error", [errors.LocalEntryNotFoundError("not cached"), errors.OfflineModeIsEnabled("offline")]
)
def test_unreachable_hub_is_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    monkeypatch.setattr("huggingface_hub.snapshot_download", FakeHub(tmp_path, [], error))
    with pytest.raises(HubUnreachable):
        weights.download_snapshot(HubRef("o/n"))


# -- weights_absent: the default served set's check (disk only, never the network) ----------


def _clip_config(**fields: object) -> ModelConfig:
    return ModelConfig.model_validate({"name": "clip", "handler": "clip", **fields})


def test_weights_absent_is_none_for_a_present_folder(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    assert weights_absent(_clip_config(), tmp_path) is None


def test_weights_absent_without_a_hub_id(tmp_path: Path) -> None:
    assert "no hub id is configured" in str(weights_absent(_clip_config(), tmp_path))
    bad = _clip_config(options={"hub_id": "not a hub id"})
    assert "options.hub_id" in str(weights_absent(bad, tmp_path))


def test_weights_absent_names_the_pull_command_unless_the_cache_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    config = _clip_config(options={"hub_id": "openai/clip-vit-base-patch32"})
    reason = weights_absent(config, tmp_path / "clip")
    assert reason is not None
    assert "inference-engine pull openai/clip-vit-base-patch32 --to" in reason and "--model clip" in reason
    snapshot = cache / "models--openai--clip-vit-base-patch32" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--openai--clip-vit-base-patch32" / "refs").mkdir()
    (cache / "models--openai--clip-vit-base-patch32" / "refs" / "main").write_text("abc123")
    assert weights_absent(config, tmp_path / "clip") is None


def test_flava_without_its_head_is_absent(tmp_path: Path) -> None:
    from inference_engine.models.flava import FlavaClassifier

    (tmp_path / "weights").mkdir()
    config = ModelConfig.model_validate({"name": "flava", "handler": "flava_classifier"})
    assert "head.safetensors is missing" in str(FlavaClassifier.weights_missing(config, tmp_path))
    (tmp_path / "head.safetensors").write_bytes(b"x")
    assert FlavaClassifier.weights_missing(config, tmp_path) is None
    headless = ModelConfig.model_validate(
        {"name": "flava", "handler": "flava_classifier", "options": {"head": None}}
    )
    assert FlavaClassifier.weights_missing(headless, tmp_path / "elsewhere") is not None
