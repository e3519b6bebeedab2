"""Property-based fuzzing of the HTTP API from its own ``/openapi.json`` (schemathesis 4.x).

A dedicated server with one fast custom model (``colour``) so the run is quick. Every operation in
the document gets cases generated to fit its schema (positive) and to violate it (negative); every
response must not be a 5xx (schemathesis' ``not_a_server_error`` check), and every error response
must be JSON in the standard shape ``{"error": {"type", "message", "request_id"}}``. Hypothesis runs
derandomized, so the same cases are generated on every run. Failures are collected over the whole
run and reported together, each with a curl command that reproduces it. ``make test`` runs a
short version; ``make fuzz`` (``FUZZ_EXAMPLES=250``) the long one.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error

from tests.helpers import ServerProcess
from tests.repository import add_colour_model

pytestmark = pytest.mark.integration

MIN_CASES = 500
#: ``FUZZ_EXAMPLES`` sets the examples of the inference routes' slices: 100 in ``make test`` (about
#: a minute), 250 or more in ``make fuzz``; the other slices follow in proportion.
INFERENCE_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
#: Examples per slice of the run: the inference routes are where the input goes.
DEFAULT_EXAMPLES = INFERENCE_EXAMPLES  # POST /predict, per generation mode
NAMED_EXAMPLES = INFERENCE_EXAMPLES  # POST /v1/models/colour/predict, per generation mode
#: POST /v1/models/{name}/predict with generated names, per generation mode
RANDOM_NAME_EXAMPLES = max(20, INFERENCE_EXAMPLES // 5)
GET_EXAMPLES = 20  # per operation and generation mode (most have nothing to vary and stop at one)
MODEL = "colour"
REQUEST_TIMEOUT_S = 30.0
#: ``/ready`` answers 503 with its own documented body (which models are not ready and why).
# Readiness routes answer 503 with their own body (which models are not ready, or {"ready": false}).
OWN_ERROR_BODY = frozenset(
    {
        "GET /ready",
        "GET /v2/health/ready",
        "GET /v2/models/{name}/ready",
        "GET /v2/models/{name}/versions/{version}/ready",
    }
)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("fuzz-repository")
    add_colour_model(repo, MODEL)
    process = ServerProcess(repo)
    process.start(tmp_path_factory.mktemp("fuzz-logs") / "server.log")
    yield process
    process.stop()


#: The documented answers to a client's own tiny deadline: the work ahead would not meet it
#: (predictive admission refuses at once), or it passed on the way.
DEADLINE_ANSWERS = {503: "deadline_unmeetable", 504: "deadline_exceeded"}


def asked_for_a_deadline_it_got(case: Case, response: Any) -> bool:
    """A 503 ``deadline_unmeetable`` or 504 ``deadline_exceeded`` answering the case's own
    ``X-Request-Timeout-Ms``."""
    headers = {k.lower(): v for k, v in (case.headers or {}).items()}
    expected = DEADLINE_ANSWERS.get(response.status_code)
    if expected is None or "x-request-timeout-ms" not in headers:
        return False
    error = response.json()["error"]
    if isinstance(error, str):  # V2 errors are strings
        return "deadline" in error
    return bool(error["type"] == expected)


@dataclass(frozen=True)
class Finding:
    target: str
    status: int
    problem: str
    curl: str

    def __str__(self) -> str:
        return f"{self.target} -> {self.status}: {self.problem}\n    {self.curl}"


def error_shape_problem(response: schemathesis.Response, path: str = "") -> str | None:
    """Why an error response is not the standard JSON error body, or ``None`` when it is.

    Under ``/v2`` the standard is the Open Inference Protocol's ``{"error": "<message>"}``.
    """
    content_type = (response.headers.get("content-type") or [""])[0]  # lowercased names, list values
    if not content_type.startswith("application/json"):
        return f"content type {content_type!r} is not JSON: {response.text[:200]!r}"
    try:
        body = response.json()
    except ValueError:
        return f"the body is not JSON: {response.text[:200]!r}"
    if path.startswith("/v2"):
        message = body.get("error") if isinstance(body, dict) and set(body) == {"error"} else None
        if isinstance(message, str) and message:
            return None
        return f"the body is not {{'error': '<message>'}}: {response.text[:300]!r}"
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return f"the body is not {{'error': {{...}}}}: {response.text[:300]!r}"
    error = body["error"]
    if set(error) != {"type", "message", "request_id"}:
        return f"the error has fields {sorted(error)}, not type, message and request_id"
    if not all(isinstance(error[key], str) and error[key] for key in ("type", "message", "request_id")):
        return f"an error field is empty or not a string: {error}"
    return None


@dataclass(frozen=True)
class Target:
    """One slice of the run: an operation, a generation mode, optionally a fixed path parameter."""

    operation: APIOperation
    mode: GenerationMode
    examples: int
    path_parameters: dict[str, str] | None = None

    @property
    def label(self) -> str:
        fixed = "".join(f" {k}={v}" for k, v in (self.path_parameters or {}).items())
        return f"{self.operation.label}{fixed} [{self.mode.value}]"


@dataclass
class FuzzRun:
    """Statuses seen per slice of the run, and what was wrong."""

    base_url: str
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    unsatisfiable: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(sum(counts.values()) for counts in self.statuses.values())

    def exercise(self, case: Case, target: Target) -> None:
        response = case.call(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S)
        self.statuses.setdefault(target.label, Counter())[response.status_code] += 1

        def note(problem: str) -> None:
            curl = case.as_curl_command(base_url=self.base_url)
            self.findings.append(Finding(target.label, response.status_code, problem, curl))

        if asked_for_a_deadline_it_got(case, response):
            return
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except Exception as exc:  # schemathesis' FailureGroup: a 5xx
            title = str(exc).strip().splitlines()[0]
            note(f"not_a_server_error: {title}; body {response.text[:300]!r}")
        if response.status_code >= 400 and case.operation.label not in OWN_ERROR_BODY:
            problem = error_shape_problem(response, case.operation.path)
            if problem is not None:
                note(problem)

    def fuzz(self, target: Target) -> None:
        strategy = target.operation.as_strategy(
            generation_mode=target.mode, path_parameters=target.path_parameters
        )

        @settings(
            max_examples=target.examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.filter_too_much,
                HealthCheck.data_too_large,
                HealthCheck.large_base_example,
            ],
        )
        @given(case=strategy)
        def run(case: Case) -> None:
            self.exercise(case, target)

        try:
            run()
        except Unsatisfiable:
            # An operation without parameters or body has nothing to break: no negative case exists.
            assert target.mode is GenerationMode.NEGATIVE, target.label
            self.unsatisfiable.append(target.label)


def targets(operations: list[APIOperation]) -> Iterator[Target]:
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if operation.method.upper() != "POST":
                yield Target(operation, mode, GET_EXAMPLES)
                if "{name}" in operation.path:
                    yield Target(operation, mode, GET_EXAMPLES, {"name": MODEL})
            elif "{name}" in operation.path:
                # Mostly the served model, so the bodies reach the parser; some random names too.
                yield Target(operation, mode, NAMED_EXAMPLES, {"name": MODEL})
                yield Target(operation, mode, RANDOM_NAME_EXAMPLES)
            else:
                yield Target(operation, mode, DEFAULT_EXAMPLES)


def test_generated_requests_never_get_a_server_error_and_errors_keep_their_shape(
    fuzz_server: ServerProcess,
) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /predict", "POST /v1/models/{name}/predict"}

    fuzz = FuzzRun(fuzz_server.url)
    started = time.monotonic()
    for target in targets(operations):
        fuzz.fuzz(target)

    width = max(len(label) for label in fuzz.statuses)
    print(f"\nschemathesis fuzz: {fuzz.total} cases in {time.monotonic() - started:.1f} s")
    for label, counts in sorted(fuzz.statuses.items()):
        by_status = ", ".join(f"{code}: {n}" for code, n in sorted(counts.items()))
        print(f"  {label:<{width}}  {sum(counts.values()):>4}  ({by_status})")
    everything = sum(fuzz.statuses.values(), Counter())
    print("  all statuses: " + ", ".join(f"{code}: {n}" for code, n in sorted(everything.items())))
    print(f"  no negative case possible: {', '.join(fuzz.unsatisfiable) or 'none'}")
    print(f"  findings: {len(fuzz.findings)}")
    for finding in fuzz.findings[:20]:
        print(f"  {finding}")

    assert not fuzz.findings, "\n".join(str(f) for f in fuzz.findings[:20])
    assert fuzz.total >= MIN_CASES, f"only {fuzz.total} cases ran"
    # A 503 or 504 counts only as the answer to the case's own X-Request-Timeout-Ms (else it is a
    # finding, above).
    assert not any(code >= 500 and code not in DEADLINE_ANSWERS for code in everything), everything
