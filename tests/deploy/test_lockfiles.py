"""The dependency locks (requirements/*.txt, `make lock`), constraints.txt and tools/install.sh.

Read statically: every lock pins every package to one version with hashes, pins each direct
dependency of its extras within pyproject.toml's range, keeps torch out of the slim install and
the CPU build of torch in the CPU locks, and agrees with the other locks and with constraints.txt
(generated from the dev lock). tools/install.sh is run with DRY_RUN=1 to check which lock and
index it picks. Then pip resolves the slim server and the server with [torch] from their metadata,
constrained by the lock, in an environment that ignores local pip configuration: nothing outside
the lock, no torch or CUDA wheel in the slim set, torch's CPU build and no nvidia-* with [torch].
Those two need the package index (and torch's CPU wheel); without it they skip, saying so.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

from tests.helpers import ROOT

REQUIREMENTS = ROOT / "requirements"
CONSTRAINTS = ROOT / "constraints.txt"
INSTALL = ROOT / "tools" / "install.sh"
LOCKS = ("slim", "torch-cpu", "torch-cuda", "dev-cpu", "dev-cuda")
EXTRAS = {
    "slim": (),
    "torch-cpu": ("torch",),
    "torch-cuda": ("torch",),
    "dev-cpu": ("dev",),
    "dev-cuda": ("dev",),
}
LOCAL = {"inference-engine", "inference-engine-client"}
TORCH_ONLY = {"torch", "torchvision", "triton", "transformers", "safetensors", "efficientnet-lite-pytorch"}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# The environment the platform-specific locks are made for (tools/lock.py).
LINUX_311 = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
             "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix"}  # fmt: skip
LINE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)"
    r"(?:\s*;\s*(?P<marker>[^\\]+?))?(?P<hashes>(?:\s+--hash=sha256:[0-9a-f]{64})+)$"
)


def _load_lock_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_tool", ROOT / "tools" / "lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("lock_tool", module)
    spec.loader.exec_module(module)
    return module


lock_tool = _load_lock_tool()


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def entries(lock: str) -> list[re.Match[str] | str]:
    """The lock's requirement lines, continuations joined: a match of LINE, or the line itself."""
    text = (REQUIREMENTS / f"{lock}.txt").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [LINE.match(line) or line for line in lines if line and not line.startswith("#")]


@functools.cache
def pins(lock: str) -> dict[str, str]:
    return {normalise(e["name"]): e["version"] for e in entries(lock) if isinstance(e, re.Match)}


def base(version: str) -> str:
    return version.split("+")[0]


@functools.cache
def project(folder: Path = ROOT) -> dict[str, Any]:
    return dict(tomllib.loads((folder / "pyproject.toml").read_text(encoding="utf-8"))["project"])


def direct_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """The server's and the client's requirements with these extras, self-references expanded."""
    server = project()
    found = [Requirement(r) for r in server["dependencies"]]
    found += [Requirement(r) for r in project(ROOT / "clients" / "python")["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in server["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if normalise(requirement.name) == "inference-engine":
                pending += sorted(requirement.extras)
            else:
                found.append(requirement)
    return [r for r in found if normalise(r.name) not in LOCAL]


def torch_pin() -> str:
    (torch,) = [r for r in direct_requirements(("torch",)) if r.name == "torch"]
    (specifier,) = list(torch.specifier)
    assert specifier.operator == "==", "torch is pinned exactly in pyproject.toml's [torch] extra"
    return specifier.version


# --------------------------------------------------------------------------------------------
# The locks, read


@pytest.mark.parametrize("lock", LOCKS)
def test_every_package_is_pinned_exactly_with_hashes(lock: str) -> None:
    text = (REQUIREMENTS / f"{lock}.txt").read_text(encoding="utf-8")
    assert "make lock" in text.splitlines()[1], "made by `make lock` (uv pip compile)"
    unpinned = [e for e in entries(lock) if not isinstance(e, re.Match)]
    assert unpinned == [], f"lines that are not `name==version --hash=...`: {unpinned[:5]}"
    names = [normalise(e["name"]) for e in entries(lock) if isinstance(e, re.Match)]
    assert len(names) == len(set(names)) > 20, "each package once"
    assert not set(names) & LOCAL, "the client and the server are installed from their folders"


@pytest.mark.parametrize("lock", LOCKS)
def test_each_direct_dependency_is_pinned_within_its_range(lock: str) -> None:
    locked = pins(lock)
    environment = None if lock == "slim" else LINUX_311  # slim is universal: markers in the lock
    missing, outside = [], []
    for requirement in direct_requirements(EXTRAS[lock]):
        if requirement.marker and environment and not requirement.marker.evaluate(environment):
            continue
        version = locked.get(normalise(requirement.name))
        if version is None:
            missing.append(str(requirement))
        elif not requirement.specifier.contains(Version(version), prereleases=True):
            outside.append(f"{requirement} but {version}")
    assert missing == [], f"{lock}: not pinned: {missing}"
    assert outside == [], f"{lock}: pinned outside pyproject.toml's range: {outside}"


def test_the_slim_lock_has_no_torch_and_no_cuda() -> None:
    names = set(pins("slim"))
    assert not names & TORCH_ONLY, sorted(names & TORCH_ONLY)
    assert not [n for n in names if n.startswith(("nvidia-", "cuda-"))]
    # One lock for every platform (no torch to choose a build of): uv's markers where needed.
    assert any(isinstance(e, re.Match) and e["marker"] for e in entries("slim"))


@pytest.mark.parametrize("lock", ["torch-cpu", "dev-cpu"])
def test_the_cpu_locks_take_torchs_cpu_build(lock: str) -> None:
    locked = pins(lock)
    assert locked["torch"] == f"{torch_pin()}+cpu"
    assert not [n for n in locked if n.startswith(("nvidia-", "cuda-")) or n == "triton"]
    assert (REQUIREMENTS / "cpu.in").read_text(encoding="utf-8") == lock_tool.cpu_input_text(torch_pin())


@pytest.mark.parametrize("lock", ["torch-cuda", "dev-cuda"])
def test_the_cuda_locks_take_pypis_build(lock: str) -> None:
    locked = pins(lock)
    assert locked["torch"] == torch_pin(), "PyPI's Linux wheel (a CUDA build), no local label"
    assert [n for n in locked if n.startswith("nvidia-")], "PyPI's CUDA torch brings nvidia-* wheels"


def test_a_package_has_one_version_in_every_lock() -> None:
    dev = {name: base(version) for name, version in pins("dev-cpu").items()}
    for lock in LOCKS:
        differ = {n: v for n, v in pins(lock).items() if n in dev and base(v) != dev[n]}
        assert differ == {}, f"{lock} differs from dev-cpu: {differ}"
    # Each lock is the one below it plus its extras (the slim lock's on the others' platform).
    slim_on_linux = {
        normalise(e["name"])
        for e in entries("slim")
        if isinstance(e, re.Match) and (not e["marker"] or Marker(e["marker"]).evaluate(LINUX_311))
    }
    assert slim_on_linux <= set(pins("torch-cpu")) <= set(pins("dev-cpu"))
    assert set(pins("torch-cuda")) <= set(pins("dev-cuda"))
    cuda_only = set(pins("dev-cuda")) - set(pins("dev-cpu"))
    assert all(n.startswith(("nvidia-", "cuda-")) or n == "triton" for n in cuda_only), cuda_only


def test_constraints_txt_is_generated_from_the_dev_lock() -> None:
    dev_lock = (REQUIREMENTS / "dev-cpu.txt").read_text(encoding="utf-8")
    assert CONSTRAINTS.read_text(encoding="utf-8") == lock_tool.constraints_text(dev_lock), "run `make lock`"
    assert "torch==" + torch_pin() + "\n" in CONSTRAINTS.read_text(encoding="utf-8")  # no +cpu


def test_make_uses_the_locks() -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    for target, expected in [
        ("install", "tools/install.sh .venv slim"),
        ("install-torch", "tools/install.sh .venv torch"),
        ("install-dev", "tools/install.sh .venv dev"),
        ("lock", "tools/lock.py"),
    ]:
        result = subprocess.run(
            [make, "-n", "-B", target], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
        )
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout, f"make {target}: {result.stdout}"


# --------------------------------------------------------------------------------------------
# tools/install.sh: which lock and index


def dry_install(kind: str, tmp_path: Path, gpu: bool, **env: str) -> list[str]:
    """The pip commands tools/install.sh would run, with or without an NVIDIA driver on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: a fake'\n" if gpu else "#!/bin/sh\nexit 9\n", encoding="utf-8")
    fake.chmod(0o755)
    environ = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "DRY_RUN": "1",
        "PYTHON": sys.executable,
        **env,
    }
    result = subprocess.run(
        ["bash", str(INSTALL), str(tmp_path / "venv"), kind],
        capture_output=True, text=True, timeout=60, env=environ, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "venv").exists(), "a dry run creates no venv"
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


@pytest.fixture
def linux_311() -> None:
    if not (sys.platform == "linux" and os.uname().machine == "x86_64" and sys.version_info[:2] == (3, 11)):
        pytest.skip("the torch and dev locks are for Linux x86_64 with Python 3.11")
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA driver, which install.sh finds whatever PATH says")


def test_install_sh_installs_the_slim_lock_then_the_local_folders(tmp_path: Path) -> None:
    commands = dry_install("slim", tmp_path, gpu=True)
    installs = [c for c in commands if " install " in c and "--upgrade pip" not in c]
    assert installs[0].endswith("--require-hashes -r requirements/slim.txt"), installs
    assert "--extra-index-url" not in installs[0], "no torch: no torch index"
    assert installs[1].endswith("--no-deps -e ./clients/python -e ."), installs
    assert commands[-1].endswith("-m pip check")


@pytest.mark.usefixtures("linux_311")
@pytest.mark.parametrize("kind", ["torch", "dev"])
def test_install_sh_picks_the_cpu_lock_without_an_nvidia_driver(kind: str, tmp_path: Path) -> None:
    reachable = dry_install(kind, tmp_path, gpu=False, TORCH_CPU_INDEX="http://localhost:9/whl/cpu")
    expected = f"--extra-index-url http://localhost:9/whl/cpu --require-hashes -r requirements/{kind}-cpu.txt"
    assert any(c.endswith(expected) for c in reachable), reachable
    # A host that does not resolve is not named (pip would retry it for every package).
    unreachable = dry_install(
        kind, tmp_path, gpu=False, TORCH_CPU_INDEX="http://no-such-host.invalid/whl/cpu"
    )
    assert any(c.endswith(f" --require-hashes -r requirements/{kind}-cpu.txt") for c in unreachable)
    assert not any("--extra-index-url" in c for c in unreachable), unreachable


@pytest.mark.usefixtures("linux_311")
@pytest.mark.parametrize("kind", ["torch", "dev"])
def test_install_sh_picks_the_cuda_lock_with_an_nvidia_driver(kind: str, tmp_path: Path) -> None:
    commands = dry_install(kind, tmp_path, gpu=True, TORCH_CPU_INDEX="http://localhost:9/whl/cpu")
    assert any(c.endswith(f"--quiet --require-hashes -r requirements/{kind}-cuda.txt") for c in commands), (
        commands
    )
    assert not any("--extra-index-url" in c for c in commands)
    forced = dry_install(
        kind, tmp_path, gpu=True, TORCH_VARIANT="cpu", TORCH_CPU_INDEX="http://localhost:9/x"
    )
    assert any(c.endswith(f"-r requirements/{kind}-cpu.txt") for c in forced), forced


# --------------------------------------------------------------------------------------------
# Resolving with pip, local configuration ignored


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, check=False, cwd=ROOT)


@functools.cache
def _index_reachable() -> bool:
    return _pip("install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet", "httpx").returncode == 0


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pyproject.toml, README.md, src/ and clients/python: pip builds metadata from a copy."""
    if not _index_reachable():
        pytest.skip("the package index is unreachable: pip cannot resolve httpx")
    copy = tmp_path_factory.mktemp("sources")
    skipped = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests")
    shutil.copytree(ROOT / "src", copy / "src", ignore=skipped)
    shutil.copytree(ROOT / "clients" / "python", copy / "clients" / "python", ignore=skipped)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, copy / name)
    return copy


def resolve(lock: str, requirement: str, sources: Path, tmp_path: Path, *extra: str) -> dict[str, str]:
    """What ``pip install`` of the server (with ``requirement``'s extras) and the client resolves
    to in an empty environment, constrained by the lock's versions: name -> version."""
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in pins(lock).items()), encoding="utf-8")
    report = tmp_path / "report.json"
    result = _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                  "-c", str(constraints), *extra, str(sources / "clients" / "python"),
                  f"{sources}{requirement}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    installed = json.loads(report.read_text(encoding="utf-8"))["install"]
    for item in installed:
        url = item["download_info"]["url"]
        assert not re.search(r"\+cu\d+|nvidia", url), f"a CUDA wheel: {url}"
    return {normalise(i["metadata"]["name"]): i["metadata"]["version"] for i in installed}


def test_the_slim_install_resolves_within_its_lock_without_torch(sources: Path, tmp_path: Path) -> None:
    resolved = resolve("slim", "", sources, tmp_path)
    assert resolved.keys() >= LOCAL
    outside = {n: v for n, v in resolved.items() if n not in LOCAL and pins("slim").get(n) != v}
    assert outside == {}, f"resolved but not pinned by requirements/slim.txt: {outside}"
    assert not resolved.keys() & TORCH_ONLY
    assert not [n for n in resolved if n.startswith(("nvidia-", "cuda-"))]


def test_the_torch_install_resolves_torchs_cpu_build_within_its_lock(sources: Path, tmp_path: Path) -> None:
    """The CPU wheel from the CPU index where it resolves, else from pip's configured find-links."""
    extra: list[str] = []
    if lock_tool.resolves("download.pytorch.org"):
        extra += ["--extra-index-url", TORCH_CPU_INDEX]
    for link in lock_tool.pip_find_links():
        extra += ["--find-links", link]
    if not extra:
        pytest.skip("no source for torch's CPU wheel: download.pytorch.org does not resolve, no find-links")
    resolved = resolve("torch-cpu", "[torch]", sources, tmp_path, *extra)
    assert resolved["torch"] == f"{torch_pin()}+cpu"
    outside = {n: v for n, v in resolved.items() if n not in LOCAL and pins("torch-cpu").get(n) != v}
    assert outside == {}, f"resolved but not pinned by requirements/torch-cpu.txt: {outside}"
    assert not [n for n in resolved if n.startswith(("nvidia-", "cuda-")) or n == "triton"]


def test_the_slim_lock_installs_with_hashes_from_the_index() -> None:
    """pip accepts the lock as it is: every pinned file exists with a listed hash for this machine."""
    if not _index_reachable():
        pytest.skip("the package index is unreachable: pip cannot resolve httpx")
    result = _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--require-hashes",
                  "-r", str(REQUIREMENTS / "slim.txt"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def test_markers_in_the_slim_lock_are_valid() -> None:
    for entry in entries("slim"):
        if isinstance(entry, re.Match) and entry["marker"]:
            Marker(entry["marker"])
