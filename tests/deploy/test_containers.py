"""The Dockerfile, .dockerignore and docker-compose.yml, read statically (no Docker engine needed).

A small Dockerfile parser (comments, line continuations, stages, global ARG defaults) is enough to
check what matters: pinned base images, both variants selectable, the torch wheel of each variant,
a non-root numeric user, a read-only-root friendly runtime, the health check, signal and entry point.
The compose file is checked for the GPU reservation, published ports (HTTP and gRPC, distinct on the
host), read-only root, grace period and mounts.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from inference_engine.settings import load_settings
from tests.helpers import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
CONSTRAINTS = ROOT / "constraints.txt"
REQUIREMENTS = ROOT / "requirements"

VARIANTS = ("cpu", "cuda")
UID = 10001
DIGEST = "0" * 64
HTTP_PORT = 8000
GRPC_PORT = 8001
SERVERS = ("inference-engine", "inference-engine-gpu")
VERSIONED_TAG = re.compile(r"\d+\.\d+")
CPU_BASE = re.compile(r"^python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?$")
CUDA_BASE = re.compile(r"^nvidia/cuda:(12\.\d+)\.\d+-cudnn-runtime-ubuntu22\.04(@sha256:[0-9a-f]{64})?$")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


# --------------------------------------------------------------------------------------------
# A small Dockerfile parser


@dataclass
class Instruction:
    keyword: str  # upper case
    value: str  # the rest of the logical line, continuations joined
    line: int


@dataclass
class Stage:
    image: str  # as written, e.g. ${CPU_BASE_IMAGE} or base-${VARIANT}
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.image}: no {keyword}"
        return found[-1]

    def args(self) -> dict[str, str | None]:
        return dict(parse_arg(i.value) for i in self.all("ARG"))

    def env(self) -> dict[str, str]:
        result: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.value):
                key, sep, value = word.partition("=")
                assert sep, f"line {instruction.line}: use ENV KEY=VALUE, not the legacy form"
                result[key] = value
        return result


@dataclass
class Dockerfile:
    global_args: dict[str, str | None]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise AssertionError(f"no stage named {name!r}; stages: {[s.name for s in self.stages]}")

    def resolve(self, text: str, build_args: dict[str, str]) -> str:
        values = {k: v or "" for k, v in self.global_args.items()} | build_args
        return VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), ""), text)

    def base_image(self, stage: Stage, build_args: dict[str, str]) -> str:
        """Follow FROM through named stages to the external image a stage starts from."""
        names = {s.name for s in self.stages if s.name}
        image = self.resolve(stage.image, build_args)
        seen: set[str] = set()
        while image in names:
            assert image not in seen, f"FROM cycle through {image}"
            seen.add(image)
            image = self.resolve(self.stage(image).image, build_args)
        return image


def parse_arg(value: str) -> tuple[str, str | None]:
    name, sep, default = value.partition("=")
    if not sep:
        return name.strip(), None
    default = default.strip()
    if len(default) >= 2 and default[0] == default[-1] and default[0] in "\"'":
        default = default[1:-1]
    return name.strip(), default


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continuation lines; drop comments (also inside continuations) and blank lines."""
    lines: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and current):
            continue
        if not stripped:
            continue
        if not current:
            start = number
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        lines.append((start, " ".join(current)))
        current = []
    assert not current, "the Dockerfile ends inside a line continuation"
    return lines


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for number, line in logical_lines(text):
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        value = value.strip()
        if keyword == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"line {number}: only ARG may come before the first FROM"
            global_args.update([parse_arg(value)])
        else:
            stages[-1].instructions.append(Instruction(keyword, value, number))
    assert stages, "no FROM in the Dockerfile"
    return Dockerfile(global_args, stages)


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"not the exec (JSON array) form: {value}"
    return [str(word) for word in parsed]


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runtime(dockerfile: Dockerfile) -> Stage:
    final = dockerfile.stages[-1]
    assert final.name == "runtime", "the last stage (the default target) must be `runtime`"
    return final


@pytest.fixture(scope="module")
def builder(dockerfile: Dockerfile) -> Stage:
    return dockerfile.stage("builder")


def constraint_pin(package: str) -> str:
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.partition("==")
        if sep and name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in constraints.txt")


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_parser_joins_continuations_and_skips_comments() -> None:
    parsed = parse_dockerfile(
        "ARG A=1\nFROM x:${A}.0 AS one\n# note\nRUN a \\\n# inner comment\n    && b\nFROM one\n"
    )
    assert parsed.global_args == {"A": "1"}
    assert [s.name for s in parsed.stages] == ["one", None]
    assert parsed.stages[0].instructions == [Instruction("RUN", "a && b", 4)]
    assert parsed.base_image(parsed.stages[1], {}) == "x:1.0"


def test_variant_build_argument_defaults_to_cpu_and_selects_a_base_stage(dockerfile: Dockerfile) -> None:
    assert dockerfile.global_args.get("VARIANT") == "cpu"
    for variant in VARIANTS:
        dockerfile.stage(f"base-{variant}")
    base = dockerfile.stage("base")
    assert base.image == "base-${VARIANT}", "the base stage must be chosen by VARIANT"
    for name in ("builder", "runtime"):
        assert dockerfile.stage(name).image == "base", f"{name} must start from the selected base"


@pytest.mark.parametrize(("variant", "pattern"), [("cpu", CPU_BASE), ("cuda", CUDA_BASE)])
def test_each_variant_starts_from_its_pinned_image(
    dockerfile: Dockerfile, runtime: Stage, variant: str, pattern: re.Pattern[str]
) -> None:
    image = dockerfile.base_image(runtime, {"VARIANT": variant})
    assert pattern.match(image), f"VARIANT={variant}: runtime starts from {image!r}"


def test_every_external_image_is_pinned(dockerfile: Dockerfile) -> None:
    names = {s.name for s in dockerfile.stages if s.name}
    for variant in VARIANTS:
        for stage in dockerfile.stages:
            image = dockerfile.resolve(stage.image, {"VARIANT": variant})
            if image in names:
                continue
            reference = image.split("@", 1)[0]
            assert ":" in reference.rsplit("/", 1)[-1], f"{image}: no tag"
            tag = reference.rsplit(":", 1)[1]
            assert tag != "latest" and "latest" not in tag, f"{image}: a moving tag"
            assert VERSIONED_TAG.search(tag), f"{image}: the tag carries no version"
    assert "latest" not in DOCKERFILE.read_text(encoding="utf-8")


def test_builder_installs_the_locked_dependencies_into_a_venv(builder: Stage) -> None:
    run = " ".join(i.value for i in builder.all("RUN"))
    assert "-m venv /opt/venv" in run
    # cpu: the hashed lock of the server with [torch] (torch's CPU wheel), then the two folders.
    cpu_lock = '--require-hashes --extra-index-url "${TORCH_INDEX_URL_CPU}" -r requirements/torch-cpu.txt'
    assert f"pip install {cpu_lock}" in run, run
    assert "pip install --no-deps ./clients/python ." in run
    # cuda: the cu126 torch without dependencies, then the project with constraints.txt's versions.
    assert '--no-deps --index-url "${TORCH_INDEX_URL_CUDA}" "torch==${TORCH_VERSION}"' in run
    assert re.search(r'pip install -c constraints\.txt \./clients/python "\.\[torch\]"', run), run
    copied = " ".join(i.value for i in builder.all("COPY"))
    for needed in ("pyproject.toml", "README.md", "constraints.txt", "requirements/", "src/"):
        assert needed in copied, f"the builder does not copy {needed}"


def lock_pin(lock: str, package: str) -> str:
    match = re.search(rf"^{package}==(\S+)", (REQUIREMENTS / f"{lock}.txt").read_text(), re.MULTILINE)
    assert match, f"{package} is not pinned in requirements/{lock}.txt"
    return match.group(1)


def test_torch_version_and_wheel_index_per_variant(dockerfile: Dockerfile, builder: Stage) -> None:
    args = builder.args()
    assert args["TORCH_VERSION"] == constraint_pin("torch") == "2.13.0"
    assert lock_pin("torch-cpu", "torch") == f"{args['TORCH_VERSION']}+cpu"
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["torch"]
    assert f"torch=={args['TORCH_VERSION']}" in extra
    assert args["TORCH_INDEX_URL_CPU"] == "https://download.pytorch.org/whl/cpu"
    cuda_index = args["TORCH_INDEX_URL_CUDA"] or ""
    match = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d{2})(\d)", cuda_index)
    assert match, cuda_index
    # The torch wheel's CUDA release must be the base image's (cu126 <-> nvidia/cuda:12.6.x).
    base = dockerfile.base_image(dockerfile.stages[-1], {"VARIANT": "cuda"})
    cuda = CUDA_BASE.match(base)
    assert cuda, base
    assert f"{match.group(1)}.{match.group(2)}" == cuda.group(1), f"{cuda_index} vs {base}"


def test_runtime_copies_the_venv_configs_and_models(runtime: Stage) -> None:
    copies = [i.value for i in runtime.all("COPY")]
    assert any(c.startswith("--from=builder") and "/opt/venv" in c for c in copies), copies
    assert any(c.split()[0].rstrip("/") == "configs" and "/app/configs" in c for c in copies), copies
    assert any(c.split()[0].rstrip("/") == "models" and "/app/models" in c for c in copies), copies
    assert runtime.last("WORKDIR").value == "/app"
    # Nothing but the venv comes from another stage: no compilers or caches in the runtime image.
    assert all(c.startswith("--from=builder /opt/venv") for c in copies if c.startswith("--from"))


def test_runtime_runs_as_a_fixed_non_root_uid(runtime: Stage) -> None:
    user = runtime.last("USER").value
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) == UID, f"USER {user}: Kubernetes' runAsNonRoot needs a numeric UID"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # USER comes after every RUN, so nothing after it runs as root by mistake, and before the start.
    user_line = runtime.last("USER").line
    assert all(i.line < user_line for i in runtime.all("RUN"))


def test_runtime_environment_is_prod_and_read_only_root_friendly(runtime: Stage) -> None:
    env = runtime.env()
    expected = {
        "IE_ENV": "prod",
        "IE_SERVER__HOST": "0.0.0.0",
        "IE_SERVER__DRAIN_TIMEOUT_S": "20",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    assert {k: env.get(k) for k in expected} == expected
    assert env["PATH"].startswith("/opt/venv/bin:")
    for key, value in env.items():
        if key.endswith(("_HOME", "_CACHE", "_DIR")) and value.startswith("/"):
            assert value.startswith("/tmp"), f"{key}={value}: only /tmp is writable"
    assert not runtime.all("VOLUME"), "VOLUME makes anonymous volumes; /tmp is mounted by the platform"


def test_runtime_ports_signal_entrypoint_and_command(runtime: Stage) -> None:
    assert runtime.last("EXPOSE").value.split() == [str(HTTP_PORT), str(GRPC_PORT)], "HTTP, then gRPC"
    assert runtime.last("STOPSIGNAL").value == "SIGTERM"
    assert exec_form(runtime.last("ENTRYPOINT").value) == ["inference-engine"]
    assert exec_form(runtime.last("CMD").value) == ["serve"]


def test_healthcheck_asks_health_with_python(runtime: Stage) -> None:
    value = runtime.last("HEALTHCHECK").value
    options, _, command = value.partition("CMD")
    assert command, value
    argv = exec_form(command.strip())
    assert argv[0] in {"python", "python3", "/opt/venv/bin/python"}, argv
    script = " ".join(argv)
    assert "/health" in script and "8000" in script
    assert "curl" not in value and "wget" not in value, "the slim image has neither curl nor wget"
    assert "--timeout=" in options and "--start-period=" in options
    compile(argv[-1], "<healthcheck>", "exec")


def test_exposed_ports_are_the_ones_the_image_configuration_listens_on(runtime: Stage) -> None:
    env = runtime.env() | {"IE_AUTH__API_KEY_HASHES": json.dumps([DIGEST])}
    env = {k: v for k, v in env.items() if k.startswith("IE_")}
    settings = load_settings(config_dir=ROOT / "configs", environ=env).settings
    assert settings.env == "prod"
    assert settings.grpc.enabled, "the image exposes a gRPC port that prod does not open"
    exposed = [int(port.split("/")[0]) for port in runtime.last("EXPOSE").value.split()]
    assert exposed == [settings.server.port, settings.grpc.port] == [HTTP_PORT, GRPC_PORT]


def test_copied_sources_exist_and_are_not_dockerignored(dockerfile: Dockerfile) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    excluded = {p for p in patterns if not p.startswith("!")}
    for stage in dockerfile.stages:
        for copy in stage.all("COPY"):
            words = [w for w in copy.value.split() if not w.startswith("--")]
            if any(w.startswith("--from") for w in copy.value.split()):
                continue
            for source in words[:-1]:
                path = source.rstrip("/")
                assert (ROOT / path).exists(), f"COPY {source}: not in the repository"
                for pattern in excluded:
                    assert not fnmatch.fnmatch(path, pattern.rstrip("/")), f"{source} is dockerignored"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()}
    for needed in (".venv", ".git", "**/__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
    assert "bench" in patterns or "bench/results" in patterns
    assert "tests" in patterns or ".hypothesis" in patterns


# --------------------------------------------------------------------------------------------
# docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose["services"]
    assert name in services, f"no service {name}; services: {sorted(services)}"
    return dict(services[name])


def seconds(duration: str) -> float:
    """Compose durations: 30s, 1m30s, 1m, 1500ms."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), f"not a duration: {duration}"
    return sum(float(number) * units[unit] for number, unit in parts)


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def interpolate(value: str, host_env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} with the given host environment."""

    def replace(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3) or ""
        if name in host_env and host_env[name] != "":
            return host_env[name]
        if op == ":?":
            raise LookupError(f"{name}: {rest}")
        return rest if op == ":-" else ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:\?|:-)([^}]*))?\}", replace, value)


def published(svc: dict[str, Any]) -> dict[int, int]:
    """Container port -> host port, from the short ("[IP:]HOST:CONTAINER[/PROTO]") or long form."""
    result: dict[int, int] = {}
    for entry in svc.get("ports", []):
        if isinstance(entry, dict):
            container, host = entry["target"], entry["published"]
        else:
            parts = str(entry).split("/", 1)[0].split(":")
            assert len(parts) >= 2, f"{entry}: publish on a fixed host port"
            host, container = parts[-2], parts[-1]
        assert int(container) not in result, f"container port {container} published twice"
        result[int(container)] = int(host)
    return result


@pytest.mark.parametrize(("name", "variant"), [("inference-engine", "cpu"), ("inference-engine-gpu", "cuda")])
def test_server_services_build_their_variant(
    compose: dict[str, Any], dockerfile: Dockerfile, name: str, variant: str
) -> None:
    svc = service(compose, name)
    build = svc["build"]
    assert (ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    assert build["args"]["VARIANT"] == variant
    dockerfile.stage(f"base-{variant}")
    assert build.get("target", "runtime") == "runtime"
    assert svc["image"].endswith(f"-{variant}") and "latest" not in svc["image"]


@pytest.mark.parametrize("name", SERVERS)
def test_server_services_publish_http_and_grpc(compose: dict[str, Any], name: str) -> None:
    ports = published(service(compose, name))
    assert set(ports) == {HTTP_PORT, GRPC_PORT}, f"{name} publishes {ports}"


def test_published_host_ports_are_distinct(compose: dict[str, Any]) -> None:
    """Both servers may be started (`--profile gpu up`); no two services may claim a host port."""
    owners: dict[int, str] = {}
    for name, svc in compose["services"].items():
        for container, host in published(svc).items():
            assert host not in owners, f"host port {host}: {owners.get(host)} and {name}:{container}"
            owners[host] = f"{name}:{container}"
    # The CPU server, the default, keeps the conventional ports (Triton's 8000 and 8001).
    assert published(service(compose, "inference-engine")) == {HTTP_PORT: HTTP_PORT, GRPC_PORT: GRPC_PORT}


def test_gpu_service_is_a_profile_reserving_one_nvidia_gpu(compose: dict[str, Any]) -> None:
    """`docker compose up` on a machine without a GPU must start: the GPU server waits for `--profile gpu`."""
    svc = service(compose, "inference-engine-gpu")
    assert svc["profiles"] == ["gpu"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "inference-engine" in svc["networks"]["default"]["aliases"]  # Prometheus' target


def test_the_default_server_needs_no_gpu(compose: dict[str, Any]) -> None:
    default = [name for name, svc in compose["services"].items() if "profiles" not in svc]
    assert "inference-engine" in default and "inference-engine-gpu" not in default
    assert "devices" not in json.dumps(compose["services"]["inference-engine"].get("deploy", {}))


@pytest.mark.parametrize("name", ["inference-engine", "inference-engine-gpu"])
def test_server_services_run_read_only_and_stop_gracefully(
    compose: dict[str, Any], runtime: Stage, name: str
) -> None:
    svc = service(compose, name)
    assert svc["read_only"] is True
    assert any(str(t).split(":")[0] == "/tmp" for t in svc["tmpfs"]), svc["tmpfs"]
    assert svc.get("stop_signal", "SIGTERM") == "SIGTERM"
    image_default = runtime.env()["IE_SERVER__DRAIN_TIMEOUT_S"]
    drain = float(environment(svc).get("IE_SERVER__DRAIN_TIMEOUT_S", image_default))
    grace = seconds(svc["stop_grace_period"])
    assert grace > drain + 5, f"stop_grace_period {grace}s leaves no room after a {drain}s drain"
    assert svc["cap_drop"] == ["ALL"]
    test = " ".join(svc["healthcheck"]["test"])
    assert "/health" in test and "curl" not in test


@pytest.mark.parametrize("name", ["inference-engine", "inference-engine-gpu"])
def test_api_key_digests_come_from_the_host_environment(compose: dict[str, Any], name: str) -> None:
    value = environment(service(compose, name))["IE_AUTH__API_KEY_HASHES"]
    assert re.fullmatch(r"\$\{IE_AUTH__API_KEY_HASHES(:\?[^}]+|:-[^}]*)\}", value), value
    if ":?" in value:
        with pytest.raises(LookupError):
            interpolate(value, {})


@pytest.mark.parametrize("name", ["inference-engine", "inference-engine-gpu"])
def test_compose_environment_is_a_valid_prod_configuration(compose: dict[str, Any], name: str) -> None:
    host = {"IE_AUTH__API_KEY_HASHES": json.dumps([DIGEST])}
    env = {k: interpolate(v, host) for k, v in environment(service(compose, name)).items()}
    settings = load_settings(config_dir=ROOT / "configs", environ=env).settings
    assert settings.env == "prod"
    assert settings.auth.enabled and settings.auth.api_key_hashes == [DIGEST]
    assert settings.server.host == "0.0.0.0" and settings.server.port == HTTP_PORT
    assert settings.grpc.enabled and settings.grpc.port == GRPC_PORT


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    mounts: list[str] = []
    for svc in compose["services"].values():
        for volume in svc.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else str(volume).split(":", 1)[0]
            if source.startswith((".", "/")):
                mounts.append(source)
                assert (ROOT / source).exists(), f"{source} is mounted but not in the repository"
    for required in (
        "./deploy/prometheus/prometheus.yml",
        "./deploy/prometheus/alerts.yml",
        "./deploy/grafana/provisioning",
        "./deploy/grafana/dashboards",
    ):
        assert required in mounts, f"{required} is not mounted"


def test_prometheus_and_grafana_mount_where_they_read(compose: dict[str, Any]) -> None:
    prometheus = service(compose, "prometheus")["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus
    grafana = service(compose, "grafana")["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana


def test_observability_images_are_pinned(compose: dict[str, Any]) -> None:
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", service(compose, "prometheus")["image"])
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", service(compose, "grafana")["image"])
    for name, svc in compose["services"].items():
        image = str(svc.get("image", ""))
        assert "latest" not in image, f"{name}: {image}"


def test_scrape_target_is_the_server_service_name(compose: dict[str, Any]) -> None:
    """Prometheus scrapes inference-engine:8000: the GPU service, or the CPU one by its alias."""
    config_path = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    if not config_path.exists():
        pytest.skip(
            "deploy/prometheus/prometheus.yml does not exist yet (see test_every_mounted_file_exists)"
        )
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    targets = [
        target
        for job in config.get("scrape_configs", [])
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    ]
    assert "inference-engine:8000" in targets, targets
    gpu = service(compose, "inference-engine-gpu")
    assert "inference-engine" in gpu["networks"]["default"]["aliases"]
