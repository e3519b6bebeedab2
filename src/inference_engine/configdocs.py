"""Render ``docs/CONFIGURATION.md`` from the settings models, so the reference cannot drift.

The tables are walked from :class:`~inference_engine.settings.Settings`: every key with its type
(constraints included), default, environment variable and the field's docstring. The prose
around them is fixed text kept here. ``inference-engine config docs > docs/CONFIGURATION.md``
writes the file, and a unit test fails when the committed file differs from what this renders.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from inference_engine.configdocs_text import AFTER_FLAGS, INTRO, KEY_NOTES, REFERENCE, SECTION_NOTES
from inference_engine.settings import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings

REGENERATE_COMMAND = "inference-engine config docs > docs/CONFIGURATION.md"

#: ``serve`` flags and the key each one sets (layer 6). A unit test checks this against the CLI.
SERVE_FLAGS: tuple[tuple[str, str], ...] = (
    ("--model-repository DIR", "model_repository"),
    ("--model NAME (repeatable)", "models"),
    ("--host HOST", "server.host"),
    ("--port PORT", "server.port"),
    ("--workers N", "server.workers"),
    ("--grpc-port PORT", "grpc.port"),
    ("--no-grpc", "grpc.enabled"),
    ("--log-format FORMAT", "logging.format"),
    ("--log-level LEVEL", "logging.level"),
)

_EN_DASH = "\u2013"  # ranges, as in 0\u201365535

#: The name shown for the key of a mapping whose values are sections (``rate_limit.overrides``).
_MAPPING_KEY_NAMES = {"rate_limit.overrides": "<client>"}


@dataclass(frozen=True)
class Row:
    """One key of the reference."""

    key: str
    type: str
    default: str
    env: str
    description: str


@dataclass(frozen=True)
class Section:
    """One table of the reference: the top level, a section, or the entries of a mapping."""

    key: str
    description: str
    rows: tuple[Row, ...]

    @property
    def title(self) -> str:
        return f"`{self.key}`" if self.key else "Top level"


# -- walking the models ----------------------------------------------------------------------


def _section_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _mapping_value_model(annotation: Any) -> type[BaseModel] | None:
    if get_origin(annotation) is dict:
        return _section_model(get_args(annotation)[1])
    return None


def _env_name(parts: list[str]) -> str:
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(parts).upper()


def _text(doc: str | None) -> str:
    """A docstring as one line of Markdown (reStructuredText's double backticks made single)."""
    return " ".join((doc or "").replace("``", "`").split())


def _is_structured(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_is_structured(arg) for arg in get_args(annotation))
    return origin in (list, dict, tuple, set) or _section_model(annotation) is not None


def sections() -> list[Section]:
    """Every table of the reference, in declaration order, the top-level keys first."""
    top: list[Row] = []
    nested: list[Section] = []
    for name, field in Settings.model_fields.items():
        model = _section_model(field.annotation)
        if model is None:
            top.append(_row([name], field))
        else:
            nested.extend(_walk([name], field, model))
    return [Section("", "Keys outside any section.", tuple(top)), *nested]


def _walk(path: list[str], field: FieldInfo, model: type[BaseModel]) -> list[Section]:
    """The section at ``path`` and those under it (nested sections, mappings of sections)."""
    key = ".".join(path)
    description = " ".join(part for part in (_text(field.description), _text(model.__doc__)) if part)
    return _tables(path, key, description, model)


def _tables(path: list[str], key: str, description: str, model: type[BaseModel]) -> list[Section]:
    rows: list[Row] = []
    below: list[Section] = []
    for name, field in model.model_fields.items():
        child = [*path, name]
        section = _section_model(field.annotation)
        if section is not None:
            below.extend(_walk(child, field, section))
            continue
        rows.append(_row(child, field))
        value_model = _mapping_value_model(field.annotation)
        if value_model is not None:
            dotted = ".".join(child)
            entry = _MAPPING_KEY_NAMES.get(dotted, "<key>")
            text = f"Each entry of `{dotted}`. " + _text(value_model.__doc__)
            below.extend(_tables([*child, entry], f"{dotted}.{entry}", text.strip(), value_model))
    return [Section(key, description, tuple(rows)), *below]


def _row(path: list[str], field: FieldInfo) -> Row:
    key = ".".join(path)
    env = f"`{_env_name(path)}`"
    if _is_structured(field.annotation):
        env += " (JSON)"
    description = _text(field.description)
    if key in KEY_NOTES:
        description = f"{description} {KEY_NOTES[key]}".strip()
    return Row(
        key=key,
        type=_type_text(field.annotation, field.metadata),
        default=_default_text(key, field),
        env=env,
        description=description,
    )


# -- rendering values ------------------------------------------------------------------------


def _annotation_text(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return " | ".join(f"`{arg}`" for arg in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_annotation_text(arg) for arg in args)
    if origin is list:
        return f"list of {_annotation_text(args[0])}"
    if origin is dict:
        value = "section (below)" if _section_model(args[1]) else _annotation_text(args[1])
        return f"mapping of {_annotation_text(args[0])} to {value}"
    names = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str", Path: "path"}
    if annotation in names:
        return names[annotation]
    return str(getattr(annotation, "__name__", annotation))


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds_text(metadata: list[Any]) -> str:
    bounds: dict[str, Any] = {}
    for item in metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(item, annotated_types.BaseMetadata) and hasattr(item, name):
                bounds[name] = getattr(item, name)
    if "ge" in bounds and "le" in bounds:
        return f"{_number(bounds['ge'])}{_EN_DASH}{_number(bounds['le'])}"
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    return ", ".join(f"{signs[name]} {_number(value)}" for name, value in bounds.items())


def _type_text(annotation: Any, metadata: list[Any]) -> str:
    bounds = _bounds_text(metadata)
    base = _annotation_text(annotation)
    return f"{base} {bounds}" if bounds else base


def _default_text(key: str, field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True, validated_data={})
    if isinstance(value, Path):
        value = str(value)
    text = value if isinstance(value, str) and value else json.dumps(value)
    shown = f"`{text}`"
    mib = 1024 * 1024
    if key.endswith("_bytes") and isinstance(value, int) and value % mib == 0:
        shown += f" ({value // mib} MiB)"
    return shown


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(section: Section) -> str:
    lines = [
        "| Key | Type | Default | Environment variable | Description |",
        "|-----|------|---------|----------------------|-------------|",
    ]
    for row in section.rows:
        cells = (f"`{row.key}`", row.type, row.default, row.env, row.description)
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def _flags_table() -> str:
    lines = ["| Flag | Sets |", "|------|------|"]
    lines.extend(f"| `{flag}` | `{key}` |" for flag, key in SERVE_FLAGS)
    return "\n".join(lines)


def render_configuration_doc() -> str:
    """The whole of ``docs/CONFIGURATION.md``."""
    parts = [INTRO.strip(), "", _flags_table(), "", AFTER_FLAGS.strip(), "", REFERENCE.strip()]
    for section in sections():
        parts += ["", f"### {section.title}", ""]
        paragraph = " ".join(p for p in (section.description, SECTION_NOTES.get(section.key, "")) if p)
        if paragraph:
            parts += [paragraph, ""]
        parts.append(_table(section))
    return "\n".join(parts) + "\n"
