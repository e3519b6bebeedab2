"""The layered settings loader: precedence, nested merging, sources and error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from inference_engine.errors import ConfigError
from inference_engine.settings import LoadedSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
REPO_CONFIGS = ROOT / "configs"


def write_yaml(path: Path, data: Any) -> Path:
    """Write ``data`` as YAML (or verbatim when it is a string) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def leaf(loaded: LoadedSettings, key: str) -> tuple[Any, str]:
    """The value and source of one dotted key, as ``items()`` reports it."""
    found = {k: (v, s) for k, v, s in loaded.items()}
    return found[key]


def declared_leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every leaf field, in declaration order."""
    keys: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += declared_leaves(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


# --- precedence ------------------------------------------------------------------------------

LAYERS = ["default", "base", "env_file", "config_file", "env_var", "override"]


@pytest.mark.parametrize("top", LAYERS)
def test_each_layer_beats_every_layer_below(tmp_path: Path, top: str) -> None:
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    depth = LAYERS.index(top)
    # Each layer, when present, sets server.port to 8000 + its index.
    base = write_yaml(config_dir / "base.yaml", {"server": {"port": 8001}}) if depth >= 1 else None
    env_file = write_yaml(config_dir / "dev.yaml", {"server": {"port": 8002}}) if depth >= 2 else None
    # A file for another environment must never be read.
    write_yaml(config_dir / "prod.yaml", {"server": {"port": 9999}})
    extra = write_yaml(tmp_path / "extra.yaml", {"server": {"port": 8003}}) if depth >= 3 else None
    environ = {"IE_SERVER__PORT": "8004"} if depth >= 4 else {}
    overrides = {"server": {"port": 8005}} if depth >= 5 else None

    loaded = load_settings(config_dir=config_dir, config_file=extra, environ=environ, overrides=overrides)

    expected_source = {
        "default": "default",
        "base": str(base),
        "env_file": str(env_file),
        "config_file": str(extra),
        "env_var": "environment variable IE_SERVER__PORT",
        "override": "command line",
    }[top]
    assert loaded.settings.server.port == 8000 + depth
    assert leaf(loaded, "server.port") == (8000 + depth, expected_source)


def test_full_stack_keeps_each_key_from_its_highest_layer(tmp_path: Path) -> None:
    config_dir = tmp_path / "configs"
    base = write_yaml(
        config_dir / "base.yaml",
        {"server": {"host": "10.0.0.1", "port": 8001}, "torch_threads": 1, "logging": {"level": "DEBUG"}},
    )
    env_file = write_yaml(config_dir / "test.yaml", {"server": {"port": 8002}, "torch_threads": 2})
    extra = write_yaml(tmp_path / "extra.yaml", {"torch_threads": 3, "images": {"max_pixels": 1234}})
    environ = {"IE_TORCH_THREADS": "4", "IE_BATCHING__MAX_BATCH_SIZE": "16"}

    loaded = load_settings(
        config_dir=config_dir,
        env="test",
        config_file=extra,
        environ=environ,
        overrides={"server": {"host": "0.0.0.0"}},
    )

    assert leaf(loaded, "server.host") == ("0.0.0.0", "command line")
    assert leaf(loaded, "server.port") == (8002, str(env_file))
    assert leaf(loaded, "torch_threads") == (4, "environment variable IE_TORCH_THREADS")
    assert leaf(loaded, "images.max_pixels") == (1234, str(extra))
    assert leaf(loaded, "logging.level") == ("DEBUG", str(base))
    assert leaf(loaded, "batching.max_batch_size") == (16, "environment variable IE_BATCHING__MAX_BATCH_SIZE")
    assert leaf(loaded, "batching.max_queue_size") == (256, "default")
    assert leaf(loaded, "env") == ("test", "command line")


# --- nested merge ----------------------------------------------------------------------------


@pytest.mark.parametrize("layer", ["env_file", "config_file", "env_var", "override"])
def test_nested_key_overrides_only_itself(tmp_path: Path, layer: str) -> None:
    config_dir = tmp_path / "configs"
    base = write_yaml(
        config_dir / "base.yaml",
        {"batching": {"max_batch_size": 4, "max_queue_size": 100, "max_batch_delay_ms": 7.5}},
    )
    partial = {"batching": {"max_batch_size": 32}}
    extra = write_yaml(tmp_path / "extra.yaml", partial) if layer == "config_file" else None
    if layer == "env_file":
        write_yaml(config_dir / "dev.yaml", partial)
    environ = {"IE_BATCHING__MAX_BATCH_SIZE": "32"} if layer == "env_var" else {}

    loaded = load_settings(
        config_dir=config_dir,
        config_file=extra,
        environ=environ,
        overrides=partial if layer == "override" else None,
    )

    assert loaded.settings.batching.max_batch_size == 32
    assert leaf(loaded, "batching.max_queue_size") == (100, str(base))
    assert leaf(loaded, "batching.max_batch_delay_ms") == (7.5, str(base))


# --- sources and items() ---------------------------------------------------------------------


def test_items_yields_every_declared_leaf_in_order_with_sources(tmp_path: Path) -> None:
    base = write_yaml(tmp_path / "base.yaml", {"server": {"request_timeout_s": 12}})

    loaded = load_settings(
        config_dir=tmp_path,
        environ={"IE_BATCHING__MAX_BATCH_SIZE": "12"},
        overrides={"logging": {"format": "json"}},
    )
    rows = list(loaded.items())

    assert [key for key, _, _ in rows] == declared_leaves(Settings)
    by_key = {key: (value, source) for key, value, source in rows}
    assert by_key["server.request_timeout_s"] == (12.0, str(base))
    assert by_key["batching.max_batch_size"] == (12, "environment variable IE_BATCHING__MAX_BATCH_SIZE")
    assert by_key["logging.format"] == ("json", "command line")
    assert by_key["server.port"] == (8000, "default")
    assert by_key["model_repository"] == ("models", "default")
    assert by_key["env"] == ("dev", "default")
    # Only keys that some layer set get a non-default source.
    assert {k for k, (_, s) in by_key.items() if s != "default"} == {
        "server.request_timeout_s",
        "batching.max_batch_size",
        "logging.format",
    }


def test_missing_config_dir_means_defaults_only(tmp_path: Path) -> None:
    loaded = load_settings(config_dir=tmp_path / "absent", environ={})

    assert loaded.settings == Settings()
    assert all(source == "default" for _, _, source in loaded.items())


def test_empty_yaml_file_is_an_empty_layer(tmp_path: Path) -> None:
    write_yaml(tmp_path / "base.yaml", "# nothing here\n")

    loaded = load_settings(config_dir=tmp_path, environ={})

    assert loaded.settings == Settings()


# --- environment variables -------------------------------------------------------------------


def test_ie_env_picks_the_environment_layer(tmp_path: Path) -> None:
    write_yaml(tmp_path / "dev.yaml", {"server": {"port": 9002}})
    prod = write_yaml(tmp_path / "prod.yaml", {"server": {"port": 9001}})

    loaded = load_settings(config_dir=tmp_path, environ={"IE_ENV": "prod"})

    assert loaded.settings.env == "prod"
    assert leaf(loaded, "env") == ("prod", "environment variable IE_ENV")
    assert leaf(loaded, "server.port") == (9001, str(prod))


def test_explicit_env_beats_ie_env(tmp_path: Path) -> None:
    write_yaml(tmp_path / "prod.yaml", {"server": {"port": 9001}})
    test_file = write_yaml(tmp_path / "test.yaml", {"server": {"port": 9003}})

    loaded = load_settings(config_dir=tmp_path, env="test", environ={"IE_ENV": "prod"})

    assert leaf(loaded, "env") == ("test", "command line")
    assert leaf(loaded, "server.port") == (9003, str(test_file))


def test_json_list_in_environment_variable(tmp_path: Path) -> None:
    loaded = load_settings(config_dir=tmp_path, environ={"IE_MODELS": '["a","b"]'})

    assert loaded.settings.models == ["a", "b"]
    assert leaf(loaded, "models") == (["a", "b"], "environment variable IE_MODELS")


def test_unrelated_environment_variables_are_ignored(tmp_path: Path) -> None:
    loaded = load_settings(config_dir=tmp_path, environ={"PORT": "1", "SERVER__PORT": "2", "HOME": "/x"})

    assert loaded.settings == Settings()


# --- invalid values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "dotted", "bad", "expected_source"),
    [
        (
            {"file": {"server": {"port": 99999}}},
            "server.port",
            "99999",
            "{base}",
        ),
        (
            {"file": {"logging": {"level": "LOUD"}}},
            "logging.level",
            "'LOUD'",
            "{base}",
        ),
        (
            {"file": {"models": [1]}},
            "models.0",
            "1",
            "{base}",
        ),
        (
            {"environ": {"IE_SERVER__PORT": "abc"}},
            "server.port",
            "'abc'",
            "IE_SERVER__PORT",
        ),
        (
            {"environ": {"IE_BATCHING__MAX_BATCH_SIZE": "0"}},
            "batching.max_batch_size",
            "'0'",
            "IE_BATCHING__MAX_BATCH_SIZE",
        ),
        (
            {"environ": {"IE_ENV": "staging"}},
            "env",
            "'staging'",
            "IE_ENV",
        ),
        (
            {"overrides": {"server": {"port": -1}}},
            "server.port",
            "-1",
            "command line",
        ),
    ],
    ids=["file-port", "file-level", "file-list-item", "env-port", "env-batch", "env-env", "override-port"],
)
def test_invalid_value_names_key_value_and_source(
    tmp_path: Path, layer: dict[str, Any], dotted: str, bad: str, expected_source: str
) -> None:
    base = tmp_path / "base.yaml"
    write_yaml(base, layer.get("file", {}))

    with pytest.raises(ConfigError) as caught:
        load_settings(
            config_dir=tmp_path,
            environ=layer.get("environ", {}),
            overrides=layer.get("overrides"),
        )

    message = str(caught.value)
    assert f"{dotted} = {bad}:" in message
    assert expected_source.format(base=base) in message


def test_invalid_value_in_config_file_names_that_file(tmp_path: Path) -> None:
    write_yaml(tmp_path / "configs" / "base.yaml", {"server": {"port": 8001}})
    extra = write_yaml(tmp_path / "extra.yaml", {"server": {"request_timeout_s": 0}})

    with pytest.raises(ConfigError, match=r"server\.request_timeout_s = 0") as caught:
        load_settings(config_dir=tmp_path / "configs", config_file=extra, environ={})

    assert f"(from {extra})" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "dotted"),
    [({"colour": "red"}, "colour"), ({"server": {"portt": 1}}, "server.portt")],
)
def test_unknown_key_in_yaml_names_key_and_file(tmp_path: Path, content: dict[str, Any], dotted: str) -> None:
    base = write_yaml(tmp_path / "base.yaml", content)

    with pytest.raises(ConfigError) as caught:
        load_settings(config_dir=tmp_path, environ={})

    assert f"{dotted}: unknown key (from {base})" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("server: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "top level must be a mapping, got list"),
        ("just a string\n", "top level must be a mapping, got str"),
    ],
    ids=["invalid-yaml", "list", "scalar"],
)
@pytest.mark.parametrize("where", ["base", "env_file", "config_file"])
def test_unreadable_yaml_layer_names_the_file(tmp_path: Path, text: str, fragment: str, where: str) -> None:
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    target = {
        "base": config_dir / "base.yaml",
        "env_file": config_dir / "dev.yaml",
        "config_file": tmp_path / "extra.yaml",
    }[where]
    write_yaml(target, text)

    with pytest.raises(ConfigError) as caught:
        load_settings(
            config_dir=config_dir,
            config_file=target if where == "config_file" else None,
            environ={},
        )

    assert str(caught.value).startswith(f"{target}: ")
    assert fragment in str(caught.value)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match="no such file") as caught:
        load_settings(config_dir=tmp_path, config_file=missing, environ={})

    assert str(missing) in str(caught.value)


@pytest.mark.parametrize(
    ("images", "fragment"),
    [
        ({"min_width": 100, "max_width": 50}, "min_width must not exceed max_width"),
        ({"min_height": 100, "max_height": 50}, "min_height must not exceed max_height"),
    ],
)
def test_image_minimum_above_maximum_is_an_error(
    tmp_path: Path, images: dict[str, int], fragment: str
) -> None:
    write_yaml(tmp_path / "base.yaml", {"images": images})

    with pytest.raises(ConfigError, match=fragment):
        load_settings(config_dir=tmp_path, environ={})


def test_image_minimum_equal_to_maximum_is_fine(tmp_path: Path) -> None:
    write_yaml(tmp_path / "base.yaml", {"images": {"min_width": 64, "max_width": 64}})

    loaded = load_settings(config_dir=tmp_path, environ={})

    assert loaded.settings.images.min_width == loaded.settings.images.max_width == 64


def test_image_minimum_above_maximum_names_the_file(tmp_path: Path) -> None:
    base = write_yaml(tmp_path / "base.yaml", {"images": {"min_width": 100, "max_width": 50}})

    with pytest.raises(ConfigError) as caught:
        load_settings(config_dir=tmp_path, environ={})

    assert str(base) in str(caught.value)


def test_unknown_section_names_the_file(tmp_path: Path) -> None:
    base = write_yaml(tmp_path / "base.yaml", {"serverr": {"port": 1}})

    with pytest.raises(ConfigError, match="serverr: unknown key") as caught:
        load_settings(config_dir=tmp_path, environ={})

    assert str(base) in str(caught.value)


def test_invalid_json_in_environment_names_variable_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_dir=tmp_path, environ={"IE_MODELS": "[bad"})

    assert "IE_MODELS" in str(caught.value)
    assert "[bad" in str(caught.value)


def test_env_value_and_source_agree_when_a_file_sets_env(tmp_path: Path) -> None:
    base = write_yaml(tmp_path / "base.yaml", {"env": "prod"})

    try:
        loaded = load_settings(config_dir=tmp_path, environ={})
    except ConfigError:
        return  # refusing 'env' in a file would also be a fix
    value, source = leaf(loaded, "env")
    assert source != str(base) or value == "prod"


# --- the repository's own configs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "fmt", "host", "timeout"),
    [
        ("dev", "text", "127.0.0.1", 30.0),
        ("prod", "json", "0.0.0.0", 10.0),
        ("test", "json", "127.0.0.1", 20.0),
    ],
)
def test_repository_configs_load(env: str, fmt: str, host: str, timeout: float) -> None:
    loaded = load_settings(config_dir=REPO_CONFIGS, env=env, environ={})
    settings = loaded.settings

    assert settings.env == env
    assert settings.logging.format == fmt
    assert settings.server.host == host
    assert settings.server.request_timeout_s == timeout
    assert settings.model_repository == Path("models")
    assert leaf(loaded, "server.port") == (8000, str(REPO_CONFIGS / "base.yaml"))
    expected_format_source = REPO_CONFIGS / f"{env}.yaml"
    assert leaf(loaded, "logging.format") == (fmt, str(expected_format_source))


def test_prod_config_sources() -> None:
    loaded = load_settings(config_dir=REPO_CONFIGS, env="prod", environ={})

    assert leaf(loaded, "server.host") == ("0.0.0.0", str(REPO_CONFIGS / "prod.yaml"))
    assert leaf(loaded, "logging.format") == ("json", str(REPO_CONFIGS / "prod.yaml"))
    assert leaf(loaded, "batching.max_batch_size") == (8, str(REPO_CONFIGS / "base.yaml"))


# --- documentation ---------------------------------------------------------------------------


def _documented_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str | None]]:
    fields: list[tuple[str, str | None]] = []
    for name, info in model.model_fields.items():
        fields.append((f"{prefix}{name}", info.description))
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields += _documented_fields(annotation, f"{prefix}{name}.")
    return fields


def test_every_setting_has_a_docstring() -> None:
    fields = _documented_fields(Settings)

    assert len(fields) > 20  # the recursion reached the sections
    undocumented = [name for name, description in fields if not (description and description.strip())]
    assert undocumented == []
