"""docs/CONFIGURATION.md is generated from the settings models and must match them exactly."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel

from inference_engine import cli, configdocs
from inference_engine.configdocs import REGENERATE_COMMAND, render_configuration_doc
from inference_engine.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGURATION_MD = DOCS / "CONFIGURATION.md"
RUNBOOK_ANCHORS = (
    "runbook-model-not-ready",
    "runbook-overload",
    "runbook-high-latency",
    "runbook-watchdog-restarts",
    "runbook-error-ratio",
)


@pytest.fixture(autouse=True)
def _no_ie_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("IE_"):
            monkeypatch.delenv(name)


def table_rows(doc: str) -> dict[str, list[str]]:
    """Reference rows by key: ``| `key` | type | default | env | description |``."""
    rows: dict[str, list[str]] = {}
    for line in doc.splitlines():
        match = re.match(r"^\| `([^`]+)` \| (.*) \|$", line)
        if match:
            cells = re.split(r"(?<!\\) \| ", match.group(2))
            if len(cells) == 4:
                rows[match.group(1)] = cells
    return rows


def flatten(data: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            keys += flatten(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


# --- the committed file ----------------------------------------------------------------------


def test_committed_configuration_doc_is_current() -> None:
    message = f"docs/CONFIGURATION.md is out of date with the settings; run `{REGENERATE_COMMAND}`"
    if not CONFIGURATION_MD.is_file():
        pytest.fail(f"docs/CONFIGURATION.md is missing; run `{REGENERATE_COMMAND}`")
    assert CONFIGURATION_MD.read_text(encoding="utf-8") == render_configuration_doc(), message


def test_cli_config_docs_prints_the_same_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "docs"]) == 0
    assert capsys.readouterr().out == render_configuration_doc()


def test_cli_config_docs_reads_no_configuration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IE_SERVER__PORT", "not-a-port")  # would stop `config show` with exit 2

    assert cli.main(["config", "docs"]) == 0
    captured = capsys.readouterr()
    assert captured.out == render_configuration_doc()
    assert captured.err == ""


# --- completeness ----------------------------------------------------------------------------


def test_every_settings_leaf_key_has_a_row(tmp_path: Path) -> None:
    rows = table_rows(render_configuration_doc())
    leaves = [key for key, _, _ in load_settings(config_dir=tmp_path, environ={}).items()]

    assert leaves, "no settings keys found"
    missing = [key for key in leaves if key not in rows]
    assert not missing, f"keys without a row in the reference: {missing}"
    assert set(flatten(Settings().model_dump(mode="json"))) <= set(rows)


def test_mapping_of_sections_documents_its_entries() -> None:
    """Keys inside dict-of-model values (``rate_limit.overrides.<client>.rate``) get rows too."""
    rows = table_rows(render_configuration_doc())
    found = 0

    def visit(model: type[BaseModel], prefix: str) -> None:
        nonlocal found
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                visit(annotation, f"{prefix}{name}.")
            elif get_origin(annotation) is dict:
                value = get_args(annotation)[1]
                if isinstance(value, type) and issubclass(value, BaseModel):
                    for sub in value.model_fields:
                        entry = [
                            k for k in rows if k.startswith(f"{prefix}{name}.") and k.endswith(f".{sub}")
                        ]
                        assert entry, f"no row for {prefix}{name}.<key>.{sub}"
                        found += 1

    visit(Settings, "")
    assert found >= 2  # rate_limit.overrides: rate and burst


def test_rows_are_complete_and_name_their_variable() -> None:
    rows = table_rows(render_configuration_doc())

    for key, (type_, default, env, description) in rows.items():
        assert type_ and default and description, key
        expected = "IE_" + key.replace(".", "__").upper()
        assert env.startswith(f"`{expected}`"), (key, env)


@pytest.mark.parametrize(
    ("key", "type_", "default"),
    [
        ("env", r"`dev` \| `prod` \| `test`", "`dev`"),
        ("models", "list of str", "`[]`"),
        ("server.port", "int 0\u201365535", "`8000`"),
        ("server.request_timeout_s", "float > 0", "`30.0`"),
        ("server.max_body_bytes", "int > 0", "`20971520` (20 MiB)"),
        ("server.default_model", r"str \| null", "`null`"),
        ("batching.max_batch_size", "int 1\u20134096", "`8`"),
        ("rate_limit.overrides", "mapping of str to section (below)", "`{}`"),
        ("rate_limit.overrides.<client>.rate", "float > 0", "required"),
    ],
)
def test_types_and_defaults_are_rendered(key: str, type_: str, default: str) -> None:
    rows = table_rows(render_configuration_doc())

    assert rows[key][0] == type_
    assert rows[key][1] == default


def test_structured_values_are_marked_json() -> None:
    rows = table_rows(render_configuration_doc())

    assert rows["models"][2] == "`IE_MODELS` (JSON)"
    assert rows["auth.api_key_hashes"][2] == "`IE_AUTH__API_KEY_HASHES` (JSON)"
    assert rows["server.port"][2] == "`IE_SERVER__PORT`"


def test_descriptions_start_with_the_field_docstring() -> None:
    rows = table_rows(render_configuration_doc())
    fields = dict(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            del fields[name]
            fields.update({f"{name}.{sub}": f for sub, f in annotation.model_fields.items()})

    for key, field in fields.items():
        assert field.description, f"{key} has no docstring"
        first = " ".join(field.description.replace("``", "`").split()).replace("|", "\\|")
        assert rows[key][3].startswith(first), key


def test_hand_written_notes_name_real_keys() -> None:
    rows = table_rows(render_configuration_doc())
    section_keys = {section.key for section in configdocs.sections()}

    assert set(configdocs.KEY_NOTES) <= set(rows)
    assert set(configdocs.SECTION_NOTES) <= section_keys


# --- the flags table -------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "key"), configdocs.SERVE_FLAGS)
def test_serve_flags_set_the_documented_key(flag: str, key: str) -> None:
    name, *metavar = flag.split()
    value = "DEBUG" if name == "--log-level" else "json" if name == "--log-format" else "1"
    args = cli._build_parser().parse_args(["serve", name, *([value] if metavar else [])])

    assert flatten(cli._overrides(args)) == [key]


def test_every_serve_flag_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    flags = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", capsys.readouterr().out))
    documented = {flag.split()[0] for flag, _ in configdocs.SERVE_FLAGS}
    described_in_prose = {"--help", "--env", "--config", "--config-dir"}

    assert flags - described_in_prose == documented


# --- links between the docs ------------------------------------------------------------------


def github_slugs(markdown: str) -> set[str]:
    """Heading anchors as GitHub makes them (lower-cased, punctuation dropped, spaces to '-')."""
    slugs: set[str] = set()
    counts: dict[str, int] = {}
    in_fence = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        match = None if in_fence else re.match(r"^#{1,6} (.+?)\s*#*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            n = counts.get(slug, 0)
            counts[slug] = n + 1
            slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def markdown_links(markdown: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)


def test_links_between_docs_resolve() -> None:
    broken: list[str] = []
    for page in sorted(DOCS.glob("*.md")):
        for link in markdown_links(page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", link):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.name}: {link} (no such file)")
            elif (
                anchor
                and target.suffix == ".md"
                and anchor not in github_slugs(target.read_text(encoding="utf-8"))
            ):
                broken.append(f"{page.name}: {link} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_runbook_anchors_exist() -> None:
    """Alert rules link to these anchors of docs/OPERATIONS.md."""
    slugs = github_slugs((DOCS / "OPERATIONS.md").read_text(encoding="utf-8"))

    assert set(RUNBOOK_ANCHORS) <= slugs
