"""deploy/kserve: the ClusterServingRuntime and the InferenceServices, checked without a cluster.

KServe's objects are validated against KServe's published API schema (a reduced copy of its
``pkg/openapi/swagger.json`` in ``schemas/kserve-openapi.json``, which names its source), strict
about unknown fields. The runtime's container, and each InferenceService's container as KServe
merges it into the runtime's, are validated as a Kubernetes Pod with ``kubernetes-validate`` in
strict mode. Then KServe's conventions, as its own runtimes follow them (config/runtimes/
kserve-tritonserver.yaml, kserve-mlserver.yaml): REST on 8080, gRPC on a port the
InferenceService declares (``h2c``, 8081 in KServe's docs), the model at /mnt/models, the
``kserve-container`` name; and that the server accepts the environment, serves the routes the
probes ask and runs as the image's non-root user. The InferenceService in README.md's gRPC
section is checked like the two files.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from inference_engine.settings import Settings, load_settings
from tests.helpers import ROOT

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed: .venv/bin/pip install kubernetes-validate",
)
jsonschema = pytest.importorskip("jsonschema")

KSERVE = ROOT / "deploy" / "kserve"
RUNTIME_FILE = KSERVE / "cluster-serving-runtime.yaml"
SERVICE_FILE = KSERVE / "inference-service.yaml"
CANARY_FILE = KSERVE / "inference-service-canary.yaml"
README = KSERVE / "README.md"
SCHEMA = Path(__file__).resolve().parent / "schemas" / "kserve-openapi.json"
# Schemas of this Kubernetes release, as in test_kubernetes.py.
KUBERNETES_VERSION = "1.33.0"

# KServe's conventions (pkg/constants/constants.go: InferenceServiceContainerName,
# InferenceServiceDefaultHttpPort, DefaultModelLocalMountPath, the protocol enums).
CONTAINER_NAME = "kserve-container"
HTTP_PORT = 8080
GRPC_PORT = 8081  # KServe's docs' grpc-v2 port (name: h2c under Knative)
MODEL_MOUNT = "/mnt/models"
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
# Pod default terminationGracePeriodSeconds: neither the runtime nor Knative's pod spec sets one.
DEFAULT_GRACE_S = 30
# ModelSpec fields that are KServe's, not the container's (dropped when merging).
MODEL_ONLY_FIELDS = ("modelFormat", "protocolVersion", "runtime", "runtimeVersion", "storage", "storageUri")
UID = 10001  # the Dockerfile's USER
DIGEST = "0" * 64
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# A folder (trailing slash) the storage initializer copies to /mnt/models.
STORAGE_URI = re.compile(r"^(s3|gs|pvc|https?|hf|oci)://\S+/$")
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.DOTALL | re.MULTILINE)

Manifest = dict[str, Any]


def load_one(path: Path) -> Manifest:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected one object, found {len(docs)}"
    return dict(docs[0])


@pytest.fixture(scope="module")
def runtime() -> Manifest:
    return load_one(RUNTIME_FILE)


@pytest.fixture(scope="module")
def service() -> Manifest:
    return load_one(SERVICE_FILE)


@pytest.fixture(scope="module")
def canary() -> Manifest:
    return load_one(CANARY_FILE)


def readme_services() -> list[Manifest]:
    blocks = YAML_BLOCK.findall(README.read_text(encoding="utf-8"))
    docs = [yaml.safe_load(block) for block in blocks]
    return [d for d in docs if isinstance(d, dict) and d.get("kind") == "InferenceService"]


@pytest.fixture(scope="module")
def grpc_service() -> Manifest:
    found = [d for d in readme_services() if d["spec"]["predictor"]["model"].get("ports")]
    assert len(found) == 1, "README.md: expected one InferenceService that declares the gRPC port"
    return found[0]


@pytest.fixture(scope="module")
def services(service: Manifest, canary: Manifest, grpc_service: Manifest) -> dict[str, Manifest]:
    return {SERVICE_FILE.name: service, CANARY_FILE.name: canary, "README.md (gRPC)": grpc_service}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    document = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(document)
    return dict(document)


def schema_errors(schema: dict[str, Any], definition: str, instance: Manifest) -> list[str]:
    validator = jsonschema.Draft7Validator({"$ref": f"#/definitions/{definition}", **schema})
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(instance)
    ]


def container(runtime: Manifest) -> dict[str, Any]:
    containers = runtime["spec"]["containers"]
    assert [c["name"] for c in containers] == [CONTAINER_NAME]
    return dict(containers[0])


def merged_container(runtime: Manifest, isvc: Manifest) -> dict[str, Any]:
    """The predictor container as KServe builds it (MergeRuntimeContainers): the model's fields over
    the runtime's, a strategic merge (env by name, ports by containerPort, volume mounts by path,
    resources by key), args appended to the runtime's."""
    merged = copy.deepcopy(container(runtime))
    model = {k: v for k, v in isvc["spec"]["predictor"]["model"].items() if k not in MODEL_ONLY_FIELDS}
    for key, value in model.items():
        keyed = {"env": "name", "ports": "containerPort", "volumeMounts": "mountPath"}
        if key in keyed:
            entries = {e[keyed[key]]: e for e in merged.get(key, [])}
            entries.update({e[keyed[key]]: e for e in value})
            merged[key] = list(entries.values())
        elif key == "args":
            merged["args"] = [*merged.get("args", []), *value]
        elif key == "resources":
            for kind, quantities in value.items():
                merged.setdefault("resources", {}).setdefault(kind, {}).update(quantities)
        else:
            merged[key] = value
    return merged


def as_pod(spec_container: dict[str, Any], volumes: list[dict[str, Any]]) -> Manifest:
    """The container in a Pod, with the model volume KServe's storage initializer mounts."""
    provisioned = {"name": "kserve-provision-location", "emptyDir": {}}
    pod_container = copy.deepcopy(spec_container)
    pod_container.setdefault("volumeMounts", []).append(
        {"name": provisioned["name"], "mountPath": MODEL_MOUNT, "readOnly": True}
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "inference-engine-predictor"},
        "spec": {"containers": [pod_container], "volumes": [*volumes, provisioned]},
    }


def validate_pod(pod: Manifest, where: str) -> None:
    try:
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{where}: {path}: {exc.message}")


def env_values(spec_container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in spec_container.get("env", [])}


def server_settings(spec_container: dict[str, Any]) -> Settings:
    """configs/ (as the image copies them to /app/configs) + the container's IE_* variables."""
    env = {k: v for k, v in env_values(spec_container).items() if isinstance(v, str)}
    env["IE_AUTH__API_KEY_HASHES"] = json.dumps([DIGEST])  # from the Secret
    return load_settings(config_dir=ROOT / "configs", environ=env).settings


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# --------------------------------------------------------------------------------------------
# Loading and schemas


def test_manifests_load(runtime: Manifest, service: Manifest, canary: Manifest) -> None:
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ClusterServingRuntime")
    for isvc in (service, canary):
        assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert "namespace" not in runtime["metadata"], "a ClusterServingRuntime is cluster-scoped"
    for obj in (runtime, service, canary):
        assert DNS_1035.match(obj["metadata"]["name"]), obj["metadata"]["name"]


def test_schema_is_strict(schema: dict[str, Any], canary: Manifest) -> None:
    """A misspelt field must fail, or the validation below proves nothing."""
    bad = copy.deepcopy(canary)
    bad["spec"]["predictor"]["canaryTrafficPercentage"] = bad["spec"]["predictor"].pop("canaryTrafficPercent")
    assert schema_errors(schema, "v1beta1.InferenceService", bad)
    bad = copy.deepcopy(canary)
    del bad["spec"]["predictor"]["model"]["modelFormat"]
    assert schema_errors(schema, "v1beta1.InferenceService", bad)


def test_runtime_validates_against_kserve_schema(schema: dict[str, Any], runtime: Manifest) -> None:
    errors = schema_errors(schema, "v1alpha1.ClusterServingRuntime", runtime)
    assert not errors, f"{RUNTIME_FILE.name}:\n" + "\n".join(errors)
    assert set(runtime["spec"]["protocolVersions"]) <= PROTOCOLS


def test_inference_services_validate_against_kserve_schema(
    schema: dict[str, Any], services: dict[str, Manifest]
) -> None:
    for where, isvc in services.items():
        errors = schema_errors(schema, "v1beta1.InferenceService", isvc)
        assert not errors, f"{where}:\n" + "\n".join(errors)
        assert isvc["spec"]["predictor"]["model"]["protocolVersion"] in PROTOCOLS, where


def test_runtime_container_validates_as_a_pod(runtime: Manifest) -> None:
    validate_pod(as_pod(container(runtime), runtime["spec"].get("volumes", [])), RUNTIME_FILE.name)


def test_predictor_containers_validate_as_a_pod(runtime: Manifest, services: dict[str, Manifest]) -> None:
    for where, isvc in services.items():
        validate_pod(as_pod(merged_container(runtime, isvc), runtime["spec"].get("volumes", [])), where)


def test_validator_is_strict(runtime: Manifest) -> None:
    bad = copy.deepcopy(container(runtime))
    bad["readinessProbe"]["httpGet"]["paht"] = "/v2/health/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(as_pod(bad, runtime["spec"]["volumes"]), KUBERNETES_VERSION, strict=True)


# --------------------------------------------------------------------------------------------
# The runtime: KServe's conventions and the server's settings


def test_runtime_follows_kserve_conventions(runtime: Manifest) -> None:
    spec = runtime["spec"]
    assert spec["multiModel"] is False
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    spec_container = container(runtime)
    # No ports: KServe merges the InferenceService's ports into these, and Knative takes one.
    assert "ports" not in spec_container
    env = env_values(spec_container)
    assert env["IE_MODEL_REPOSITORY"] == MODEL_MOUNT
    assert int(env["IE_SERVER__PORT"]) == HTTP_PORT and int(env["IE_GRPC__PORT"]) == GRPC_PORT
    metrics = {"prometheus.kserve.io/port": str(HTTP_PORT), "prometheus.kserve.io/path": "/metrics"}
    assert spec["annotations"] == metrics
    assert spec_container["args"] == ["serve"]
    # The image the Kustomize base deploys.
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "base" / "deployment.yaml").read_text())
    assert spec_container["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]


def test_runtime_environment_is_accepted_by_the_server(runtime: Manifest) -> None:
    settings = server_settings(container(runtime))
    assert settings.env == "prod"
    assert settings.model_repository == Path(MODEL_MOUNT)
    assert settings.server.host == "0.0.0.0"
    assert (settings.server.port, settings.grpc.port) == (HTTP_PORT, GRPC_PORT)
    assert settings.grpc.enabled, "grpc-v2 is declared but the server would not listen"
    assert settings.auth.enabled and not settings.auth.protect_operational, "probes carry no key"
    limit = cpu_cores(container(runtime)["resources"]["limits"]["cpu"])
    assert 1 <= settings.torch_threads <= limit, "torch threads must be set and fit the CPU limit"
    assert 1 <= settings.server.preprocess_workers <= limit
    # SIGTERM: the 503 window and the drain fit the pod's default grace period, with room.
    assert settings.server.shutdown_delay_s + settings.server.drain_timeout_s + 5 <= DEFAULT_GRACE_S


def test_api_keys_come_from_a_required_secret(runtime: Manifest) -> None:
    ref = env_values(container(runtime))["IE_AUTH__API_KEY_HASHES"]["secretKeyRef"]
    assert ref == {"name": "inference-engine-auth", "key": "api-key-hashes", "optional": False}


def test_probes_ask_server_routes_that_need_no_key(runtime: Manifest) -> None:
    from inference_engine.api import v2
    from inference_engine.api.access import OPERATIONAL_PATHS

    router = v2.build_router(None, Settings())  # type: ignore[arg-type]  # routes only, no service
    routes = {getattr(route, "path", None) for route in router.routes}
    spec_container = container(runtime)
    expected = {"readinessProbe": "/v2/health/ready", "livenessProbe": "/v2/health/live"}
    for probe, path in expected.items():
        get = spec_container[probe]["httpGet"]
        assert get["path"] == path and get["path"] in routes and get["path"] in OPERATIONAL_PATHS, probe
        assert get["port"] == HTTP_PORT, f"{probe} must ask the HTTP port by number (no named ports)"
    # Knative serving containers take no lifecycle hooks; readiness covers model loading.
    assert "lifecycle" not in spec_container and "startupProbe" not in spec_container


def test_security_context(runtime: Manifest) -> None:
    spec_container = container(runtime)
    ctx = spec_container["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == UID and ctx["runAsGroup"] == UID
    assert f"USER {UID}:{UID}" in (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False and ctx.get("privileged", False) is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m for m in spec_container["volumeMounts"]}
    volumes = {v["name"]: v for v in runtime["spec"]["volumes"]}
    assert set(mounts) == {"/tmp"} and "emptyDir" in volumes[mounts["/tmp"]["name"]]


# --------------------------------------------------------------------------------------------
# The InferenceServices


def test_inference_services_use_the_runtime(runtime: Manifest, services: dict[str, Manifest]) -> None:
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert all(f.get("autoSelect") for f in runtime["spec"]["supportedModelFormats"])
    for where, isvc in services.items():
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"], where
        assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats, where
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"], where
        assert STORAGE_URI.match(model["storageUri"]), f"{where}: a repository folder"
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless", where
        predictor = isvc["spec"]["predictor"]
        assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"], f"{where}: never scale to zero"


def test_inference_service_settings(runtime: Manifest, service: Manifest) -> None:
    """The merged container: resources bounded, threads within the limit, HTTP on KServe's port."""
    merged = merged_container(runtime, service)
    resources = merged["resources"]
    for key in ("cpu", "memory"):
        assert key in resources["requests"] and key in resources["limits"], key
    limit = cpu_cores(resources["limits"]["cpu"])
    assert cpu_cores(resources["requests"]["cpu"]) <= limit
    settings = server_settings(merged)
    assert 1 <= settings.torch_threads <= limit
    assert settings.server.port == HTTP_PORT and "ports" not in merged, "REST on KServe's default port"
    predictor = service["spec"]["predictor"]
    assert predictor["scaleMetric"] in {"concurrency", "rps", "cpu", "memory"}
    assert predictor["scaleTarget"] > 0
    assert predictor["timeout"] > settings.server.request_timeout_s, "the server's deadline answers first"
    assert service["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"


def test_canary_is_the_same_service_with_a_new_repository(service: Manifest, canary: Manifest) -> None:
    assert "canaryTrafficPercent" not in service["spec"]["predictor"]
    percent = canary["spec"]["predictor"]["canaryTrafficPercent"]
    assert 0 < percent < 100
    old_uri = service["spec"]["predictor"]["model"]["storageUri"]
    new_uri = canary["spec"]["predictor"]["model"]["storageUri"]
    assert new_uri != old_uri, "a canary needs a changed spec: here a new repository"
    stripped = copy.deepcopy(canary)
    del stripped["spec"]["predictor"]["canaryTrafficPercent"]
    stripped["spec"]["predictor"]["model"]["storageUri"] = old_uri
    assert stripped == service, "the canary must differ only in canaryTrafficPercent and storageUri"


def test_grpc_variant_exposes_the_servers_grpc_port(runtime: Manifest, grpc_service: Manifest) -> None:
    merged = merged_container(runtime, grpc_service)
    settings = server_settings(merged)
    assert grpc_service["spec"]["predictor"]["model"]["protocolVersion"] == "grpc-v2"
    # Knative: one port, named h2c (HTTP/2 cleartext), on the server's gRPC listener.
    assert merged["ports"] == [{"name": "h2c", "containerPort": settings.grpc.port, "protocol": "TCP"}]
    assert settings.grpc.port == GRPC_PORT and settings.grpc.enabled
