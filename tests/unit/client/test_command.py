"""``inference-engine predict`` without a server: finding images, usage errors, a server that is down.

The runs against a real server are in tests/integration/test_client.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from inference_engine import cli
from inference_engine.client import Prediction
from inference_engine.client.command import _line, find_images
from tests.helpers import free_port


@pytest.fixture(autouse=True)
def _no_ie_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IE_URL", "IE_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_folders_are_walked_for_image_suffixes_and_named_files_are_kept(tmp_path: Path) -> None:
    (tmp_path / "b" / "deep").mkdir(parents=True)
    for name in ("b/2.JPG", "b/1.png", "b/deep/3.webp", "b/notes.txt", "b/.hidden.tiff", "x.txt"):
        (tmp_path / name).write_bytes(b"x")

    images, missing = find_images([tmp_path / "b", tmp_path / "x.txt", tmp_path / "nope"])

    names = [str(p.relative_to(tmp_path)) for p in images]
    assert names == ["b/.hidden.tiff", "b/1.png", "b/2.JPG", "b/deep/3.webp", "x.txt"]
    assert missing == [tmp_path / "nope"]


def test_a_missing_path_fails_without_a_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["predict", str(tmp_path / "nope.jpg"), "--url", "http://127.0.0.1:9"])

    assert code == 1
    assert "nope.jpg: error: no such file or folder" in capsys.readouterr().err


def test_a_folder_without_images_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("x")

    assert cli.main(["predict", str(tmp_path)]) == 1
    assert "no image files found" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--top-k", "--concurrency"])
def test_counts_must_be_positive(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["predict", "x.jpg", flag, "0"])

    assert exit_.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_a_server_that_is_down_fails_every_image_fast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(8):
        (tmp_path / f"{i}.png").write_bytes(b"\x89PNG")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the progress bar is drawn
    monkeypatch.setenv("IE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("IE_API_KEY", "k")

    code = cli.main(["predict", str(tmp_path), "--json", "--concurrency", "1", "--labels", "a, b,,c"])

    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert [r["ok"] for r in records] == [False] * 8
    codes = [r["error"]["type"] for r in records]
    # The first image is tried 3 times; the breaker opens during the second image's retries
    # (5 refused connections), and the rest fail without trying.
    assert codes == ["connect_error"] + ["circuit_open"] * 7
    assert "could not connect to 127.0.0.1" in err
    assert "8/8" in err  # the progress bar


def test_a_custom_answer_without_predictions_is_printed_whole() -> None:
    prediction = Prediction.from_json({"model": "m", "boxes": [1]})

    assert _line(Path("x.jpg"), prediction) == 'x.jpg: {"model": "m", "boxes": [1]}'


def test_a_version_and_a_routing_key_reach_the_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    seen: list[dict[str, object]] = []

    def predict(self: object, path: Path, **kwargs: object) -> Prediction:
        seen.append(kwargs)
        return Prediction.from_json(
            {"model": "m", "model_version": "2", "predictions": [{"label": "cat", "score": 0.5, "index": 1}]}
        )

    monkeypatch.setattr("inference_engine.client.InferenceClient.predict", predict)
    argv = [
        "predict",
        str(tmp_path / "a.png"),
        "--model",
        "m",
        "--model-version",
        "2",
        "--routing-key",
        "u-1",
    ]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert seen[0]["version"] == "2" and seen[0]["routing_key"] == "u-1"
    assert capsys.readouterr().out.strip().endswith("cat (0.500) [m version 2]")
