"""The command line in-process: ``config show``, ``models list``, exit codes and flag mapping."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from inference_engine import __version__, cli
from inference_engine.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
REPO_CONFIGS = ROOT / "configs"
REPO_MODELS = ROOT / "models"


@pytest.fixture(autouse=True)
def _no_ie_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ; IE_* variables set by CI must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("IE_"):
            monkeypatch.delenv(name)


def add_model(repo: Path, name: str, config: dict[str, Any]) -> Path:
    folder = repo / name
    folder.mkdir(parents=True)
    (folder / "model.yaml").write_text(yaml.safe_dump({"name": name, **config}), encoding="utf-8")
    return folder


def table(out: str) -> dict[str, str]:
    """``models list`` rows by model name (the header excluded)."""
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["NAME", "VERSION"]
    return {line.split()[0]: line for line in lines[1:]}


# --- config show -----------------------------------------------------------------------------


def test_config_show_text_prints_values_and_sources(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["config", "show", "--env", "prod", "--config-dir", str(REPO_CONFIGS)])
    out = capsys.readouterr().out

    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert '"0.0.0.0"' in lines["server.host"]
    assert lines["server.host"].endswith(f"# {REPO_CONFIGS / 'prod.yaml'}")
    assert '"json"' in lines["logging.format"]
    assert lines["logging.format"].endswith(f"# {REPO_CONFIGS / 'prod.yaml'}")
    assert lines["server.port"].split()[1] == "8000"
    assert lines["server.port"].endswith(f"# {REPO_CONFIGS / 'base.yaml'}")
    assert '"prod"' in lines["env"]
    assert lines["env"].endswith("# command line")
    assert lines["server.default_model"].split()[1] == "null"
    assert lines["server.default_model"].endswith("# default")


def test_config_show_hides_a_password_in_urls(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IE_RATE_LIMIT__REDIS_URL", "redis://:hunter2@redis:6379/0")
    assert cli.main(["config", "show", "--env", "test", "--config-dir", str(REPO_CONFIGS)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert '"redis://:***@redis:6379/0"' in out


def test_config_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["config", "show", "--env", "prod", "--config-dir", str(REPO_CONFIGS), "--format", "json"]
    )
    shown = json.loads(capsys.readouterr().out)

    assert code == 0
    expected = load_settings(config_dir=REPO_CONFIGS, env="prod", environ={})
    assert shown == {key: {"value": value, "source": source} for key, value, source in expected.items()}
    assert shown["server.host"] == {"value": "0.0.0.0", "source": str(REPO_CONFIGS / "prod.yaml")}
    assert shown["batching.max_queue_size"] == {"value": 256, "source": str(REPO_CONFIGS / "base.yaml")}


def test_config_show_includes_extra_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("server:\n  port: 9123\n", encoding="utf-8")

    code = cli.main(
        ["config", "show", "--config-dir", str(REPO_CONFIGS), "--config", str(extra), "--format", "json"]
    )
    shown = json.loads(capsys.readouterr().out)

    assert code == 0
    assert shown["server.port"] == {"value": 9123, "source": str(extra)}
    assert shown["env"]["value"] == "dev"


def test_config_show_reads_ie_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IE_SERVER__PORT", "9555")

    code = cli.main(["config", "show", "--config-dir", str(REPO_CONFIGS), "--format", "json"])
    shown = json.loads(capsys.readouterr().out)

    assert code == 0
    assert shown["server.port"] == {"value": 9555, "source": "environment variable IE_SERVER__PORT"}


@pytest.mark.parametrize(
    ("files", "extra_args", "fragments"),
    [
        ({"base.yaml": "server:\n  port: 99999\n"}, [], ["server.port = 99999", "base.yaml"]),
        ({"base.yaml": "serverr: 1\n"}, [], ["serverr: unknown key", "base.yaml"]),
        ({"base.yaml": "server: [\n"}, [], ["not valid YAML", "base.yaml"]),
        ({}, ["--config", "missing.yaml"], ["missing.yaml", "no such file"]),
    ],
    ids=["bad-value", "unknown-key", "bad-yaml", "missing-config"],
)
def test_config_show_bad_configuration_exits_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, str],
    extra_args: list[str],
    fragments: list[str],
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    args = [str(tmp_path / a) if a.endswith(".yaml") else a for a in extra_args]

    code = cli.main(["config", "show", "--config-dir", str(tmp_path), *args])
    captured = capsys.readouterr()

    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith("inference-engine: ")
    for fragment in fragments:
        assert fragment in captured.err


def test_bad_environment_variable_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IE_BATCHING__MAX_BATCH_SIZE", "many")

    code = cli.main(["config", "show", "--config-dir", str(REPO_CONFIGS)])
    err = capsys.readouterr().err

    assert code == 2
    assert "batching.max_batch_size = 'many'" in err
    assert "IE_BATCHING__MAX_BATCH_SIZE" in err


# --- models list -----------------------------------------------------------------------------


def test_models_list_repository_models(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["models", "list", "--config-dir", str(REPO_CONFIGS), "--model-repository", str(REPO_MODELS)]
    )
    rows = table(capsys.readouterr().out)

    assert code == 0
    row = rows["efficientnet_lite0"].split()
    assert row[1:4] == ["1", "efficientnet_lite", "cpu"]
    assert row[-1] == "ok"
    assert "batch<=8" in row
    if not (REPO_MODELS / "clip" / "weights").exists():  # as shipped: CLIP's weights are pulled later
        assert "weights absent:" in rows["clip"] and "inference-engine pull" in rows["clip"]


def test_models_list_fills_batching_defaults_from_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    add_model(repo, "plain", {"handler": "torchscript", "weights": "w.pt"})
    add_model(repo, "pinned", {"handler": "torchscript", "weights": "w.pt", "max_batch_size": 2})
    extra = tmp_path / "extra.yaml"
    extra.write_text("batching:\n  max_batch_size: 3\n  max_batch_delay_ms: 1.5\n", encoding="utf-8")

    code = cli.main(
        [
            "models",
            "list",
            "--config-dir",
            str(REPO_CONFIGS),
            "--config",
            str(extra),
            "--model-repository",
            str(repo),
        ]
    )
    rows = table(capsys.readouterr().out)

    assert code == 0
    assert "batch<=3 delay=1.5ms" in rows["plain"]
    assert "batch<=2 delay=1.5ms" in rows["pinned"]
    assert list(rows) == ["pinned", "plain"]


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"handler": "nope"}, "unknown handler 'nope'"),
        (
            {"handler": "torchscript", "max_batch_size": 0},
            "max_batch_size: Input should be greater than or equal to 1",
        ),
        ({"handler": "torchscript", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"handler": "model.py"}, "handler file model.py does not exist"),
    ],
    ids=["unknown-handler", "zero-batch", "unknown-key", "missing-model-py"],
)
def test_models_list_broken_model_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: dict[str, Any], reason: str
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPO_MODELS / "efficientnet_lite0", repo / "efficientnet_lite0")
    add_model(repo, "broken", config)

    code = cli.main(["models", "list", "--config-dir", str(REPO_CONFIGS), "--model-repository", str(repo)])
    rows = table(capsys.readouterr().out)

    assert code == 1
    assert rows["efficientnet_lite0"].split()[-1] == "ok"
    assert "INVALID: " in rows["broken"]
    assert reason in rows["broken"]


def test_models_list_invalid_yaml_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "repo" / "garbled"
    folder.mkdir(parents=True)
    (folder / "model.yaml").write_text("handler: [\n", encoding="utf-8")

    code = cli.main(
        ["models", "list", "--config-dir", str(REPO_CONFIGS), "--model-repository", str(tmp_path / "repo")]
    )
    out = capsys.readouterr().out

    assert code == 1
    # The YAML parser's message spans several lines; the row starts with the model's name.
    row = out.split("\n", 1)[1]
    assert row.startswith("garbled ")
    assert f"INVALID: {folder / 'model.yaml'}: not valid YAML" in row


def test_models_list_empty_repository_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "not_a_model").mkdir()  # a folder without model.yaml is not a model

    code = cli.main(
        ["models", "list", "--config-dir", str(REPO_CONFIGS), "--model-repository", str(tmp_path)]
    )

    assert code == 1
    assert capsys.readouterr().out.strip() == f"no models in {tmp_path}"


def test_models_list_missing_repository_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nonexistent"

    code = cli.main(["models", "list", "--config-dir", str(REPO_CONFIGS), "--model-repository", str(missing)])
    captured = capsys.readouterr()

    assert code == 2
    assert captured.out == ""
    assert f"model repository {missing} is not a folder" in captured.err


# --- argument parsing ------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["--version"])

    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"inference-engine {__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["config"],
        ["models"],
        ["config", "show", "--env", "staging"],
        ["config", "show", "--format", "yaml"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)

    assert caught.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve"], {}),
        (
            ["serve", "--model-repository", "repo", "--model", "a", "--model", "b"],
            {"model_repository": "repo", "models": ["a", "b"]},
        ),
        (["serve", "--host", "0.0.0.0", "--port", "0"], {"server": {"host": "0.0.0.0", "port": 0}}),
        (["serve", "--port", "9000"], {"server": {"port": 9000}}),
        (["serve", "--log-format", "json"], {"logging": {"format": "json"}}),
        (["serve", "--log-level", "DEBUG"], {"logging": {"level": "DEBUG"}}),
        (
            ["serve", "--log-format", "text", "--log-level", "ERROR"],
            {"logging": {"format": "text", "level": "ERROR"}},
        ),
        (["config", "show", "--env", "prod"], {}),
        (["models", "list", "--model-repository", "elsewhere"], {"model_repository": "elsewhere"}),
    ],
)
def test_overrides_from_flags(argv: list[str], expected: dict[str, Any]) -> None:
    args = cli._build_parser().parse_args(argv)

    assert cli._overrides(args) == expected


def test_serve_flags_become_command_line_settings() -> None:
    args = cli._build_parser().parse_args(
        [
            "serve",
            "--env",
            "prod",
            "--config-dir",
            str(REPO_CONFIGS),
            "--port",
            "9100",
            "--log-format",
            "text",
        ]
    )

    loaded = load_settings(
        config_dir=args.config_dir, env=args.env, environ={}, overrides=cli._overrides(args)
    )
    rows = {key: (value, source) for key, value, source in loaded.items()}

    assert rows["server.port"] == (9100, "command line")
    assert rows["logging.format"] == ("text", "command line")  # beats prod.yaml's json
    assert rows["server.host"] == ("0.0.0.0", str(REPO_CONFIGS / "prod.yaml"))


def test_auth_new_key_prints_a_key_and_its_digest(capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    assert cli.main(["auth", "new-key"]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    key, digest = lines["key"].strip(), lines["sha256"].strip()
    assert len(key) >= 40
    assert digest == hashlib.sha256(key.encode()).hexdigest()


def test_auth_hash_key_from_argument_and_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    expected = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"  # sha256("secret")
    assert cli.main(["auth", "hash-key", "secret"]) == 0
    assert capsys.readouterr().out.strip() == expected
    monkeypatch.setattr("sys.stdin", io.StringIO("secret\n"))
    assert cli.main(["auth", "hash-key", "-"]) == 0
    assert capsys.readouterr().out.strip() == expected


def test_serve_refuses_auth_without_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "prod.yaml").write_text("auth:\n  enabled: true\n")
    code = cli.main(
        ["serve", "--config-dir", str(tmp_path), "--env", "prod", "--model-repository", str(tmp_path)]
    )
    assert code == 2
    assert "auth.api_key_hashes is empty" in capsys.readouterr().err
