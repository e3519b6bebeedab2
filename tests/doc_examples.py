"""Runnable examples in Markdown: find them, run them, and compare what they print with the doc.

The convention (docs/API.md says the same to its readers):

* A fenced block is an example when the line just before its opening fence (blank lines aside) is
  ``<!-- example: METHOD /path, METHOD /path -->``, naming the endpoints it calls as the doc's
  endpoints table spells them (``{name}`` and ``{version}`` for path parameters), and
  ``gRPC Method`` for the RPCs of ``inference.GRPCInferenceService`` it calls, as the doc's RPC
  table spells them (``<!-- example: gRPC ModelInfer, gRPC ModelStreamInfer -->``). ``<!-- example -->``
  runs a block that claims no endpoint, and ``<!-- example: setup -->`` marks a block that makes
  the files the other examples use; it runs first.
* ``console`` blocks: each line starting with ``$ `` is a shell command (a trailing ``\\`` joins
  the next line); the lines after it, up to the next command, are its output.
* ``python`` blocks are whole programs. Their output, where the doc shows it, is the next fenced
  block when that one is marked ``<!-- output -->``.
* A ``console``, ``sh`` or ``python`` block that must not run (it needs another configuration,
  or it is the server itself) is marked ``<!-- not-run: why -->``; an unmarked one is an error,
  so no new example goes unchecked by accident.

Before running, ``localhost:8000`` and ``127.0.0.1:8000`` become the test server's address,
``localhost:8001`` and ``127.0.0.1:8001`` its gRPC address, and ``/tmp/doc_`` the test's own
folder. Output is compared for shape, not numbers (see
:func:`compare_output`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MARKER = re.compile(r"^<!--\s*(example|not-run|output)\s*(?::\s*(.*?))?\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")
SHELL_LANGUAGES = frozenset({"console", "sh", "bash", "shell"})
CHECKED_LANGUAGES = SHELL_LANGUAGES | {"python"}
ENDPOINT = re.compile(r"^(GET|POST|PUT|DELETE|PATCH|HEAD)\s+(/\S*)$|^(gRPC)\s+([A-Za-z]\w*)$")
#: The "method" of an RPC in an example's marker: ``gRPC ModelInfer``.
GRPC = "gRPC"
#: The service whose RPCs the markers name; the request metrics' ``route`` is ``/SERVICE/Method``.
GRPC_SERVICE = "inference.GRPCInferenceService"
ELLIPSIS = "..."

# JSON strings whose value is part of the contract (an error's type, a model's name); any other
# string only has to be a string: request ids, messages and labels of random models vary.
STABLE_STRING_KEYS = frozenset(
    {"type", "model", "model_name", "status", "object", "modality", "name", "datatype", "state"}
)
# Header values that change from response to response.
VOLATILE_HEADERS = frozenset(
    {"date", "content-length", "etag", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after"}
)
HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")
NUMBER = re.compile(r"-?\b\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")


@dataclass
class Block:
    language: str
    text: str
    line: int  # of the opening fence, 1-based
    marker: str | None  # "example", "not-run", "output" or None
    argument: str


@dataclass
class Command:
    command: str
    expected: str
    line: int


@dataclass
class Example:
    language: str  # "console" or "python"
    line: int
    code: str
    endpoints: list[tuple[str, str]] = field(default_factory=list)
    setup: bool = False
    expected: str = ""  # python: the output block's text

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.language}"

    def commands(self) -> list[Command]:
        return parse_console(self.code, self.line)


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced block, with the HTML-comment marker just above it (if any)."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index].strip() != "```":
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        previous = start - 1
        while previous >= 0 and not lines[previous].strip():
            previous -= 1
        found = MARKER.match(lines[previous].strip()) if previous >= 0 else None
        blocks.append(
            Block(
                language=opening.group(1),
                text="\n".join(body),
                line=start + 1,
                marker=found.group(1) if found else None,
                argument=(found.group(2) or "") if found else "",
            )
        )
    return blocks


def parse_endpoints(argument: str, line: int) -> list[tuple[str, str]]:
    endpoints = []
    for part in filter(None, (p.strip() for p in argument.split(","))):
        found = ENDPOINT.match(part)
        if not found:
            raise ValueError(f"line {line}: {part!r} is not 'METHOD /path' or 'gRPC Method'")
        endpoints.append((found.group(1), found.group(2)) if found.group(1) else (GRPC, found.group(4)))
    return endpoints


def examples(markdown: str) -> list[Example]:
    """The runnable examples, in the order of the document."""
    blocks = fenced_blocks(markdown)
    found: list[Example] = []
    for position, block in enumerate(blocks):
        if block.marker != "example":
            continue
        if block.language not in ("console", "python"):
            raise ValueError(f"line {block.line}: an example must be a console or python block")
        setup = block.argument.strip() == "setup"
        example = Example(
            language=block.language,
            line=block.line,
            code=block.text,
            endpoints=[] if setup else parse_endpoints(block.argument, block.line),
            setup=setup,
        )
        following = blocks[position + 1] if position + 1 < len(blocks) else None
        if block.language == "python" and following is not None and following.marker == "output":
            example.expected = following.text
        found.append(example)
    return found


def unmarked_blocks(markdown: str) -> list[Block]:
    """Shell and Python blocks that are neither an example nor marked not-run."""
    return [
        b
        for b in fenced_blocks(markdown)
        if b.language in CHECKED_LANGUAGES and b.marker not in ("example", "not-run")
    ]


def parse_console(text: str, first_line: int) -> list[Command]:
    """``$ `` commands (with their ``\\`` continuations) and the output shown under each."""
    commands: list[Command] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith("$ "):
            if line.strip():
                raise ValueError(f"line {first_line + 1 + index}: output before any command")
            index += 1
            continue
        start = index
        parts = [line[2:]]
        while parts[-1].endswith("\\") and index + 1 < len(lines):
            index += 1
            parts.append(lines[index])
        index += 1
        output: list[str] = []
        while index < len(lines) and not lines[index].startswith("$ "):
            output.append(lines[index])
            index += 1
        commands.append(Command("\n".join(parts), "\n".join(output).strip(), first_line + 1 + start))
    return commands


def endpoints_table(markdown: str, heading: str = "## Endpoints") -> list[tuple[str, str]]:
    """(method, path) for every path in the first table under ``heading``."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    rows: list[tuple[str, str]] = []
    in_table = False
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            in_table = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0] in ("Method",) or set(cells[0]) <= set("-: "):
                continue
            rows.extend((cells[0], path) for path in re.findall(r"`([^`]+)`", cells[1]))
        elif in_table:
            break
    return rows


def rpcs_table(markdown: str, heading: str) -> list[str]:
    """The RPC names (the first cell's backticked name) of the first table under ``heading``."""
    lines = markdown.splitlines()
    start = lines.index(heading)
    names: list[str] = []
    in_table = False
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            in_table = True
            found = re.match(r"^\|\s*`(\w+)`", line)
            if found:
                names.append(found.group(1))
        elif in_table:
            break
    return names


def rpc_route(method: str) -> str:
    """The ``route`` label of an RPC in the request metrics."""
    return f"/{GRPC_SERVICE}/{method}"


def localize(text: str, port: int, folder: str, grpc_port: int | None = None) -> str:
    """The doc's server addresses (HTTP, and gRPC when the server has it) and ``/tmp/doc_`` files,
    made the test's own."""
    for host in ("localhost:8000", "127.0.0.1:8000"):
        text = text.replace(host, f"127.0.0.1:{port}")
    if grpc_port is not None:
        for host in ("localhost:8001", "127.0.0.1:8001"):
            text = text.replace(host, f"127.0.0.1:{grpc_port}")
    return text.replace("/tmp/doc_", f"{folder}/doc_")


# -- comparing outputs -------------------------------------------------------------------------------


def _with_ellipses(text: str) -> str:
    """The doc's ``...`` (more keys, or more list items like the last one) as parseable JSON."""
    text = re.sub(r",\s*\.\.\.\s*}", ', "...": "..."}', text)
    return re.sub(r"(?<=[\[,])\s*\.\.\.\s*(?=[\],])", ' "..."', text)


def parse_json(text: str) -> Any:
    """The JSON a doc shows (with ``...`` elisions), or ``None`` when it is not JSON."""
    stripped = text.strip()
    if not stripped.startswith(("{", "[")):
        return None
    try:
        return json.loads(_with_ellipses(stripped))
    except ValueError:
        return None


def _kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)  # true, false and null are compared as values
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def compare_json(expected: Any, actual: Any, where: str = "$", values: bool = True) -> list[str]:
    """Differences in shape: keys, list lengths, types, booleans and the stable strings.

    ``values=False`` skips the stable strings: for list items past those the doc shows, which are
    compared with the last one shown (another model's entry has another name).
    """
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {_kind(actual)}"]
        problems = []
        wanted = {k for k in expected if k != ELLIPSIS}
        missing = sorted(wanted - actual.keys())
        extra = sorted(actual.keys() - wanted) if ELLIPSIS not in expected else []
        if missing:
            problems.append(f"{where}: missing keys {missing}")
        if extra:
            problems.append(f"{where}: keys the doc does not show {extra}")
        for key in sorted(wanted & actual.keys()):
            child = f"{where}.{key}"
            stable = values and key in STABLE_STRING_KEYS and isinstance(expected[key], str)
            if stable and expected[key] != actual[key]:
                problems.append(f"{child}: expected {expected[key]!r}, got {actual[key]!r}")
            else:
                problems.extend(compare_json(expected[key], actual[key], child, values))
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {_kind(actual)}"]
        open_ended = bool(expected) and expected[-1] == ELLIPSIS
        items = expected[:-1] if open_ended else expected
        if (len(actual) < len(items)) if open_ended else (len(actual) != len(items)):
            return [f"{where}: expected {len(items)}{'+' if open_ended else ''} items, got {len(actual)}"]
        problems = []
        for index, value in enumerate(actual):
            if not items:
                break
            shown = index < len(items)
            template = items[index] if shown else items[-1]
            problems.extend(compare_json(template, value, f"{where}[{index}]", values and shown))
        return problems
    if _kind(expected) != _kind(actual):
        return [f"{where}: expected {expected!r}, got {actual!r}"]
    return []


def mask(line: str) -> str:
    """A line with what varies (ids, numbers) blanked and runs of spaces made one."""
    line = HEX_ID.sub("<id>", line)
    line = NUMBER.sub("<n>", line)
    return " ".join(line.split())


def compare_text(expected: str, actual: str) -> list[str]:
    want = [mask(line) for line in expected.strip().splitlines() if line.strip()]
    got = [mask(line) for line in actual.strip().splitlines() if line.strip()]
    if want == got:
        return []
    return [f"expected (numbers and ids masked):\n{chr(10).join(want)}\ngot:\n{chr(10).join(got)}"]


def compare_http(expected: str, actual: str) -> list[str]:
    """``curl -i``/``-I`` output: the status line, the headers shown, then the body."""
    want_head, _, want_body = expected.replace("\r", "").partition("\n\n")
    got_head, _, got_body = actual.replace("\r", "").partition("\n\n")
    want_lines, got_lines = want_head.strip().splitlines(), got_head.strip().splitlines()
    problems = []
    if want_lines[0].strip() != got_lines[0].strip():
        problems.append(f"status: expected {want_lines[0]!r}, got {got_lines[0]!r}")
    got_headers = {}
    for line in got_lines[1:]:
        name, _, value = line.partition(":")
        got_headers[name.strip().lower()] = value.strip()
    for line in want_lines[1:]:
        if line.strip() == ELLIPSIS:
            continue
        name, _, value = (part.strip() for part in line.partition(":"))
        name = name.lower()
        if name not in got_headers:
            problems.append(f"header {name!r} is missing")
        elif name not in VOLATILE_HEADERS and not HEX_ID.fullmatch(value) and got_headers[name] != value:
            problems.append(f"header {name}: expected {value!r}, got {got_headers[name]!r}")
    if want_body.strip() and want_body.strip() != ELLIPSIS:
        problems.extend(compare_output(want_body, got_body))
    return problems


def compare_output(expected: str, actual: str) -> list[str]:
    """How ``actual`` differs from the output the doc shows (an empty list: it matches).

    * JSON (objects and lists, pretty-printed or not) is compared for shape: the same keys,
      list lengths and value types, the same booleans and nulls, and the same strings under
      :data:`STABLE_STRING_KEYS`. ``...`` in the doc stands for more keys (``{"a": 1, ...}``) or
      more list items like the one before it (``[0.1, 0.2, ...]``).
    * An HTTP response (``curl -i``) compares its status line, the headers the doc shows (their
      values too, except those that vary: date, length, ETag, generated ids) and its body.
    * Anything else is compared line by line, with numbers and 32-hex-digit ids masked.
    """
    if not expected.strip():
        return []
    if expected.lstrip().startswith("HTTP/"):
        return compare_http(expected, actual)
    wanted = parse_json(expected)
    if wanted is not None:
        try:
            got = json.loads(actual)
        except ValueError:
            return [f"expected JSON, got {actual[:500]!r}"]
        return compare_json(wanted, got)
    return compare_text(expected, actual)


def requests_by_route(metrics_text: str) -> dict[str, float]:
    """``inference_engine_requests_total`` summed by ``route``."""
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("inference_engine_requests_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        found = re.search(r'route="([^"]*)"', labels)
        if found:
            counts[found.group(1)] = counts.get(found.group(1), 0.0) + float(value)
    return counts


# -- running examples --------------------------------------------------------------------------------


@dataclass
class Ran:
    """What one command (or one Python example) printed, and how it ended."""

    command: Command
    output: str
    returncode: int
    stderr: str = ""


def run_console(
    example: Example, port: int, folder: Path, timeout: float = 120.0, grpc_port: int | None = None
) -> list[Ran]:
    """Run a console block's commands in one ``bash`` session, each one's output kept apart.

    The virtualenv's ``bin`` comes first on ``PATH``, so ``python`` is the one running the tests.
    """
    commands = example.commands()
    marker = "__doc_example_command_done__"
    script = "".join(
        f"{localize(c.command, port, str(folder), grpc_port)}\nprintf '\\n{marker} %s\\n' \"$?\"\n"
        for c in commands
    )
    environ = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        cwd=folder,
        env=environ,
        timeout=timeout,
        check=False,
    )
    pieces = re.split(rf"\n{marker} (\d+)\n", done.stdout)  # output, status, output, status, ...
    results = []
    for index, command in enumerate(commands):
        if 2 * index + 1 < len(pieces):
            results.append(
                Ran(command, pieces[2 * index].rstrip("\n"), int(pieces[2 * index + 1]), done.stderr)
            )
        else:  # the session ended before this command
            results.append(Ran(command, "", done.returncode or -1, done.stderr))
    return results


def run_python(example: Example, port: int, folder: Path, grpc_port: int | None = None) -> str:
    """Run a Python example in this process and return what it printed (exceptions propagate)."""
    source = localize(example.code, port, str(folder), grpc_port)
    code = compile(source, f"docs/API.md:{example.line}", "exec")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, {"__name__": "__main__"})
    return printed.getvalue()
