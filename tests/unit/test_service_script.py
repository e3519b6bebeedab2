"""The root-level ``service.py`` compatibility script maps its flags onto ``inference-engine serve``."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from inference_engine import cli

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "service.py"

Translate = Callable[[list[str]], list[str]]


@pytest.fixture(scope="module")
def service() -> ModuleType:
    spec = importlib.util.spec_from_file_location("service_script_under_test", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def translate(service: ModuleType) -> Translate:
    function: Translate = service.translate
    return function


def test_translate_documented_example(translate: Translate, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)

    command = translate(["--model_directory", "models/efficientnet_lite0", "--env", "prod", "--port", "9000"])

    assert command == [
        "serve",
        "--model-repository",
        str((ROOT / "models").resolve()),
        "--model",
        "efficientnet_lite0",
        "--port",
        "9000",
        "--env",
        "prod",
    ]


def test_translate_resolves_relative_folder_against_cwd(
    translate: Translate, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "repo" / "my_model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    command = translate(["--model_directory", "repo/my_model/"])

    assert command == [
        "serve",
        "--model-repository",
        str((tmp_path / "repo").resolve()),
        "--model",
        "my_model",
    ]
    assert Path(command[2]).is_absolute()


def test_translate_absolute_folder_and_dot_segments(translate: Translate, tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b" / ".." / "model_x"

    command = translate(["--model_directory", str(folder), "--env", "test"])

    assert command == [
        "serve",
        "--model-repository",
        str((tmp_path / "a").resolve()),
        "--model",
        "model_x",
        "--env",
        "test",
    ]


def test_translate_passes_other_flags_through_in_order(translate: Translate, tmp_path: Path) -> None:
    command = translate(
        ["--host", "0.0.0.0", "--model_directory", str(tmp_path / "m"), "--log-format=json", "--port", "1"]
    )

    assert command[:5] == ["serve", "--model-repository", str(tmp_path.resolve()), "--model", "m"]
    assert command[5:] == ["--host", "0.0.0.0", "--log-format=json", "--port", "1"]
    assert "--env" not in command


@pytest.mark.parametrize(
    "argv",
    [[], ["--env", "prod"], ["--model_directory", "models/x", "--env", "staging"]],
    ids=["nothing", "no-folder", "bad-env"],
)
def test_translate_usage_errors(
    translate: Translate, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        translate(argv)

    assert caught.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_translated_command_parses_as_serve(translate: Translate, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)

    args = cli._build_parser().parse_args(
        translate(["--model_directory", "models/efficientnet_lite0", "--env", "prod", "--port", "9000"])
    )

    assert args.command == "serve"
    assert args.env == "prod"
    assert cli._overrides(args) == {
        "model_repository": str((ROOT / "models").resolve()),
        "models": ["efficientnet_lite0"],
        "server": {"port": 9000},
    }


def test_translate_does_not_treat_model_as_model_directory(
    translate: Translate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)

    try:
        command = translate(["--model_directory", "models/efficientnet_lite0", "--model", "other"])
    except SystemExit:
        return  # refusing the flag would also be a fix

    assert command[2:5] == [str((ROOT / "models").resolve()), "--model", "efficientnet_lite0"]
