"""Class labels from a model's ``labels`` setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_engine.errors import EngineError, ModelLoadError
from inference_engine.models.labels import imagenet_labels, resolve_labels


def test_imagenet_labels_are_the_1000_short_names() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[0] == "tench"
    assert labels[281] == "tabby"
    assert labels[967] == "espresso"
    assert all(label and label == label.strip() and "," not in label for label in labels)


def test_resolve_none_gives_no_labels(tmp_path: Path) -> None:
    assert resolve_labels(None, tmp_path) == []


def test_resolve_imagenet(tmp_path: Path) -> None:
    labels = resolve_labels("imagenet", tmp_path)
    assert labels == imagenet_labels()
    assert labels[281] == "tabby"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [(["cat", "dog"], ["cat", "dog"]), ([], []), ([1, 2.5], ["1", "2.5"])],
)
def test_resolve_inline_list(tmp_path: Path, spec: list[str], expected: list[str]) -> None:
    labels = resolve_labels(spec, tmp_path)
    assert labels == expected
    assert all(isinstance(label, str) for label in labels)


def test_resolve_file_relative_to_the_model_folder(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("  tabby \n\nespresso\r\n   \n\tcafé au lait\n", encoding="utf-8")
    assert resolve_labels("labels.txt", tmp_path) == ["tabby", "espresso", "café au lait"]


def test_resolve_file_in_a_subfolder(tmp_path: Path) -> None:
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "classes.txt").write_text("a\nb\n", encoding="utf-8")
    assert resolve_labels("meta/classes.txt", tmp_path) == ["a", "b"]


def test_resolve_absolute_file_ignores_the_model_folder(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.txt"
    path.write_text("x\ny\n", encoding="utf-8")
    assert resolve_labels(str(path), tmp_path / "model") == ["x", "y"]


def test_missing_file_is_a_model_load_error_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        resolve_labels("nope.txt", tmp_path)
    assert str(tmp_path / "nope.txt") in str(info.value)
    assert "No such file or directory" in str(info.value)
    assert not isinstance(info.value, EngineError)


def test_directory_instead_of_file_is_a_model_load_error(tmp_path: Path) -> None:
    (tmp_path / "labels").mkdir()
    with pytest.raises(ModelLoadError, match=r"labels file .*labels cannot be read"):
        resolve_labels("labels", tmp_path)


def test_undecodable_file_is_a_model_load_error_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ModelLoadError, match=r"labels\.txt"):
        resolve_labels("labels.txt", tmp_path)
